"""The snapshot capability opens exactly the recorded dataset's fields for the recorded range,
once: every way around it is tried here."""

from __future__ import annotations

import copy
import pickle

import pytest
from vault_rows import event, numbered, user

from bastion.errors import InputError, IntegrityError
from bastion.events import (
    SYSTEM,
    AccessDecision,
    CleanroomSnapshot,
    encode_event,
)
from bastion.ledger.api import Receipt
from bastion.vault import Vault
from bastion.vault.changes import last_seq
from bastion.vault.plan import leaf_hash
from bastion.vault.snapshot import SnapshotGrant, open_snapshot

FIELDS = ["campaign_id", "day", "event_type", "user_id", "watch_time_s"]
_index = iter(range(1, 1_000_000))


def recorded(
    dataset: str = "events",
    fields: list[str] = FIELDS,
    after: int = 0,
    through: int = 0,
    records: int = 100,
) -> tuple[Receipt, bytes]:
    entry = encode_event(
        CleanroomSnapshot(
            actor=SYSTEM, reason="test", at="2026-01-01T00:00:00Z", snapshot_id="ab" * 16,
            dataset=dataset, fields=fields, mode="full", after_seq=after, through_seq=through,
            records=records,
        )
    )  # fmt: skip
    return Receipt(next(_index), leaf_hash(entry)), entry


def opened(vault: Vault, grant: SnapshotGrant) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for batch in open_snapshot(vault, grant):
        for i, key in enumerate(batch.record_keys):
            out[key] = {name: values[i] for name, values in batch.columns.items()}
    return out


@pytest.fixture
def events_vault(vault: Vault) -> Vault:
    vault.ingest_rows("users", numbered([user(1), user(2)]))
    vault.ingest_rows("events", numbered([event(n, 1 + n % 2) for n in range(6)]))
    return vault


def test_a_grant_opens_its_fields_of_its_range_and_only_once(events_vault: Vault) -> None:
    through = last_seq(events_vault.db)
    grant = SnapshotGrant.bind(*recorded(through=through), dataset="events", fields=FIELDS)
    rows = opened(events_vault, grant)
    assert len(rows) == 6 and set(next(iter(rows.values()))) == set(FIELDS)
    token = events_vault.pseudonym_of("u00001")
    assert {r["user_id"] for r in rows.values()} == {token, events_vault.pseudonym_of("u00002")}
    assert rows["e00000002"]["watch_time_s"] == 14.5
    # The same entry again: refused, whatever process holds it (the use is in the database).
    with pytest.raises(InputError, match="already used"):
        open_snapshot(events_vault, grant)
    # A range that ends before the events were written opens none of them.
    users_only = last_seq(events_vault.db) - 6
    grant = SnapshotGrant.bind(*recorded(through=users_only), dataset="events", fields=FIELDS)
    assert opened(events_vault, grant) == {}


def test_a_grant_binds_only_the_dataset_and_fields_it_records(events_vault: Vault) -> None:
    receipt, entry = recorded(through=last_seq(events_vault.db))
    with pytest.raises(InputError, match="another dataset"):
        SnapshotGrant.bind(receipt, entry, dataset="users", fields=FIELDS)
    with pytest.raises(InputError, match="exactly these fields") as extra:
        SnapshotGrant.bind(receipt, entry, dataset="events", fields=[*FIELDS, "device_id"])
    assert extra.value.field == "device_id"
    with pytest.raises(InputError, match="exactly these fields"):
        SnapshotGrant.bind(receipt, entry, dataset="events", fields=FIELDS[1:])
    with pytest.raises(IntegrityError, match="leaf hash"):
        SnapshotGrant.bind(receipt, entry.replace(b'"records":100', b'"records":999'),
                           dataset="events", fields=FIELDS)  # fmt: skip
    decision = encode_event(
        AccessDecision(actor=SYSTEM, reason="r", at="2026-01-01T00:00:00Z", request_id="x",
                       action="read", dataset="events", decision="allow")
    )  # fmt: skip
    with pytest.raises(InputError, match=r"not a cleanroom\.snapshot"):
        SnapshotGrant.bind(Receipt(1, leaf_hash(decision)), decision, dataset="events",
                           fields=FIELDS)  # fmt: skip


def test_no_grant_opens_a_protected_field_or_a_future_range(events_vault: Vault) -> None:
    through = last_seq(events_vault.db)
    grant = SnapshotGrant.bind(*recorded("users", ["email"], through=through), dataset="users",
                               fields=["email"])  # fmt: skip
    with pytest.raises(InputError, match="protected") as refused:
        open_snapshot(events_vault, grant)
    assert refused.value.field == "email"
    grant = SnapshotGrant.bind(*recorded(through=through + 1), dataset="events", fields=FIELDS)
    with pytest.raises(InputError, match="past the change feed"):
        open_snapshot(events_vault, grant)
    grant = SnapshotGrant.bind(*recorded(through=through, records=5), dataset="events",
                               fields=FIELDS)  # fmt: skip
    with pytest.raises(IntegrityError, match="more records"):
        opened(events_vault, grant)


def test_a_grant_cannot_be_made_changed_or_copied() -> None:
    receipt, entry = recorded()
    with pytest.raises(TypeError):
        SnapshotGrant(CleanroomSnapshot.model_validate_json(entry), receipt)
    grant = SnapshotGrant.bind(receipt, entry, dataset="events", fields=FIELDS)
    with pytest.raises(AttributeError):
        grant.event = grant.event  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(grant)
    assert copy.deepcopy(grant) is grant
    with pytest.raises(TypeError):
        open_snapshot(None, object())  # type: ignore[arg-type]
