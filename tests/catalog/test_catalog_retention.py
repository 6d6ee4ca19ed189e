"""A dataset may declare a retention period; anything but a sane whole number of days is refused."""

from __future__ import annotations

import pytest

from bastion.catalog import default_catalog
from bastion.catalog.loader import parse_catalog
from bastion.errors import InputError

CATALOG = """
version: 1
datasets:
  notes:
    record_id: note_id
    subject_key: owner
    {retention}
    fields:
      note_id: {{type: string, classification: public, nullable: false}}
      owner: {{type: string, classification: protected, nullable: false}}
"""


def test_the_shipped_catalog_keeps_events_180_days_and_users_until_erased() -> None:
    catalog = default_catalog()
    assert catalog.dataset("events").retention_days == 180
    assert catalog.dataset("users").retention_days is None


def test_a_declared_retention_is_read() -> None:
    spec = parse_catalog(CATALOG.format(retention="retention_days: 30"), "c.yaml").dataset("notes")
    assert spec.retention_days == 30


@pytest.mark.parametrize("value", ["0", "-1", "36501", "1.5", "true", "'30'", "[30]"])
def test_a_bad_retention_is_refused_naming_the_dataset(value: str) -> None:
    with pytest.raises(InputError, match="retention_days") as err:
        parse_catalog(CATALOG.format(retention=f"retention_days: {value}"), "c.yaml")
    assert err.value.dataset == "notes"
