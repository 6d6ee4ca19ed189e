"""Each transform on each kind of value: what a released field looks like."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bastion.catalog import default_catalog
from bastion.policy import FieldKind, PseudonymUnavailable, Transform, apply_transform, kind_of
from bastion.policy.transforms import (
    REDACTED,
    generalize_geo,
    generalize_number,
    mask_email,
    mask_ip,
    mask_person_name,
    mask_phone,
)


def test_field_kinds_of_the_shipped_catalog() -> None:
    users = default_catalog().dataset("users")
    kinds = {f.name: kind_of(f) for f in users.fields}
    assert kinds["email"] is FieldKind.EMAIL
    assert kinds["phone"] is FieldKind.PHONE
    assert kinds["name"] is FieldKind.PERSON_NAME
    assert kinds["birth_date"] is FieldKind.DATE
    assert kinds["location"] is FieldKind.GEO
    assert kinds["ip_address"] is FieldKind.IP_ADDRESS
    assert kinds["user_id"] is FieldKind.IDENTIFIER
    assert kinds["device_ids"] is FieldKind.TEXT_LIST
    assert kinds["country"] is FieldKind.COUNTRY
    assert kind_of(default_catalog().dataset("videos").field("upload_ip")) is FieldKind.IP_ADDRESS


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        (FieldKind.EMAIL, "ada.lovelace@example.org", "***@example.org"),
        (FieldKind.EMAIL, "no-at-sign", REDACTED),
        (FieldKind.PHONE, "+1 (555) 010-4477", "***4477"),
        (FieldKind.PHONE, "12", REDACTED),
        (FieldKind.PERSON_NAME, "Ada King-Lovelace", "A. K. L."),
        (FieldKind.IP_ADDRESS, "203.0.113.77", "203.*.*.*"),
        (FieldKind.IP_ADDRESS, "2001:db8::1", "2001:*"),
        (FieldKind.IP_ADDRESS, "not an ip", REDACTED),
        (FieldKind.DATE, date(1990, 5, 17), "1990-**-**"),
        (FieldKind.IDENTIFIER, "u_12345678", "u_***"),
        (FieldKind.TEXT, "hello world", "h***"),
        (FieldKind.GEO, (40.7128, -74.006), REDACTED),
        (FieldKind.NUMBER, 42, REDACTED),
        (FieldKind.TEXT_LIST, ["dev-aaaa1111", "dev-bbbb2222"], ["de***", "de***"]),
        (FieldKind.EMAIL, None, None),
    ],
)
def test_mask(kind: FieldKind, value: object, masked: object) -> None:
    assert apply_transform(Transform.MASK, kind, value) == masked


@pytest.mark.parametrize(
    ("kind", "value", "general"),
    [
        (FieldKind.DATE, date(1990, 5, 17), 1990),
        (FieldKind.TIMESTAMP, datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "2026-01-02"),
        (FieldKind.GEO, (40.7128, -74.006), [40.7, -74.1]),
        (FieldKind.IP_ADDRESS, "203.0.113.77", "203.0.113.0/24"),
        (FieldKind.IP_ADDRESS, "2001:db8:1234:5678::1", "2001:db8:1234::/48"),
        (FieldKind.COUNTRY, "de", "europe"),
        (FieldKind.COUNTRY, "ZZ", "other"),
        (FieldKind.NUMBER, 1234, 1000),
        (FieldKind.NUMBER, 37.5, 40),
        (FieldKind.EMAIL, "a@b.example", "***@b.example"),  # no coarser form: masked
        (FieldKind.NUMBER, None, None),
    ],
)
def test_generalize(kind: FieldKind, value: object, general: object) -> None:
    assert apply_transform(Transform.GENERALIZE, kind, value) == general


def test_generalized_location_is_no_longer_precise() -> None:
    # Two points ~5 km apart in one 0.1-degree cell generalize to the same value.
    assert generalize_geo((40.71, -74.01)) == generalize_geo((40.75, -74.05))
    assert generalize_geo((40.71, -74.01), grid=1.0) == [40.0, -75.0]


def test_clear_returns_the_value_unchanged() -> None:
    value = {"nested": [1, 2]}
    assert apply_transform(Transform.CLEAR, FieldKind.TEXT, value) is value


def test_pseudonym_uses_the_vault_callback_and_fails_closed_without_it() -> None:
    def token(v: object) -> str:
        return f"tok:{v}"

    assert apply_transform(Transform.PSEUDONYM, FieldKind.IDENTIFIER, "u1", pseudonymize=token) == (
        "tok:u1"
    )
    assert apply_transform(
        Transform.PSEUDONYM, FieldKind.TEXT_LIST, ["d1", "d2"], pseudonymize=token
    ) == ["tok:d1", "tok:d2"]
    with pytest.raises(PseudonymUnavailable):
        apply_transform(Transform.PSEUDONYM, FieldKind.IDENTIFIER, "u1")


def test_a_denied_field_has_no_value() -> None:
    with pytest.raises(ValueError):
        apply_transform(Transform.DENY, FieldKind.TEXT, "secret")


def test_helpers_never_echo_the_input_on_failure() -> None:
    for fn in (mask_email, mask_phone, mask_ip, mask_person_name):
        assert "secret" not in str(fn("secret"))
    assert generalize_number(0) == 0
