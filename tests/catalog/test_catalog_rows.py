"""validate_row: coercion of CSV text and typed values, and every bad-row error."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bastion.catalog import default_catalog, to_jsonable, validate_row
from bastion.errors import InputError

USERS = default_catalog().dataset("users")
EVENTS = default_catalog().dataset("events")

CSV_USER = {
    "user_id": "u0000001",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "phone": "+15555550100",
    "birth_date": "1990-12-10",
    "country": "US",
    "region": "us-west",
    "age_band": "35-44",
    "signup_date": "2025-03-01",
    "device_ids": "d-1;d-2",
    "ip_address": "203.0.113.7",
    "location": "37.7749,-122.4194",
    "language": "en",
}


def test_csv_text_is_coerced() -> None:
    row = validate_row(USERS, CSV_USER, file="users.csv", row_number=1)
    assert row["birth_date"] == date(1990, 12, 10)
    assert row["device_ids"] == ["d-1", "d-2"]
    assert row["location"] == (37.7749, -122.4194)


def test_typed_values_pass_through() -> None:
    typed = {
        **CSV_USER,
        "birth_date": date(1990, 12, 10),
        "signup_date": date(2025, 3, 1),
        "device_ids": ["d-1"],
        "location": {"lat": 1.5, "lon": 2.5},
    }
    row = validate_row(USERS, typed, file="users.parquet", row_number=7)
    assert row["location"] == (1.5, 2.5)
    assert row["device_ids"] == ["d-1"]


def test_optional_fields_may_be_absent_or_empty() -> None:
    row = dict(CSV_USER)
    del row["phone"]
    row["ip_address"] = ""
    out = validate_row(USERS, row, file="users.csv", row_number=2)
    assert out["phone"] is None and out["ip_address"] is None


def test_event_timestamp_and_floats() -> None:
    ev = {
        "event_id": "e1",
        "user_id": "u1",
        "video_id": "v1",
        "event_type": "ad_click",
        "ts": "2026-01-02T10:00:00+02:00",
        "day": "2026-01-02",
        "campaign_id": "c001",
        "revenue_usd": 0.25,
        "age_band": "18-24",
        "region": "uk",
    }
    out = validate_row(EVENTS, ev, file="events.jsonl", row_number=3)
    assert out["ts"] == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)
    assert to_jsonable(out["ts"]) == "2026-01-02T08:00:00Z"
    assert out["revenue_usd"] == 0.25


def _bad(
    change: dict[str, object], drop: tuple[str, ...] = (), dataset: object = USERS
) -> InputError:
    row = {**CSV_USER, **change}
    for k in drop:
        row.pop(k)
    with pytest.raises(InputError) as exc:
        validate_row(dataset, row, file="users.csv", row_number=42)  # type: ignore[arg-type]
    err = exc.value
    assert err.file == "users.csv" and err.row == 42 and err.dataset == "users"
    return err


def test_missing_subject_id() -> None:
    err = _bad({}, drop=("user_id",))
    assert err.field == "user_id" and "missing subject id" in str(err)
    err = _bad({"user_id": ""})
    assert "missing subject id" in str(err)


def test_missing_required_field() -> None:
    err = _bad({}, drop=("email",))
    assert err.field == "email" and "missing value" in str(err)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("birth_date", "10/12/1990", "ISO 8601 date"),
        ("birth_date", 19901210, "expected a date"),
        ("name", 12, "expected a string"),
        ("location", "north pole", "expected"),
        ("location", "91,0", "outside"),
        ("device_ids", 5, "list of strings"),
        ("device_ids", '["a", 1]', "list of strings"),
        ("age_band", "30-39", "outside the field's declared domain"),
    ],
)
def test_wrong_type(field: str, value: object, reason: str) -> None:
    err = _bad({field: value})
    assert err.field == field and reason in str(err)
    # The message never quotes the value itself (it may be protected).
    assert str(value) not in str(err)


def test_wrong_numeric_types() -> None:
    base = {
        "event_id": "e1",
        "user_id": "u1",
        "video_id": "v1",
        "event_type": "view",
        "ts": "2026-01-02T10:00:00Z",
        "day": "2026-01-02",
        "age_band": "18-24",
        "region": "uk",
    }
    for value, reason in [
        ("12s", "expected a number"),
        (True, "expected a number"),
        ("nan", "finite"),
    ]:
        with pytest.raises(InputError) as exc:
            validate_row(EVENTS, {**base, "watch_time_s": value}, file="e.csv", row_number=1)
        assert exc.value.field == "watch_time_s" and reason in str(exc.value)
    with pytest.raises(InputError) as exc:
        validate_row(EVENTS, {**base, "day": "2025-12-31"}, file="e.csv", row_number=1)
    assert exc.value.field == "day" and "domain" in str(exc.value)


def test_unknown_column() -> None:
    err = _bad({"ssn": "123-45-6789"})
    assert err.field == "ssn" and "unknown column" in str(err)
    assert "123-45-6789" not in str(err)


def test_oversize_value() -> None:
    err = _bad({"name": "x" * 129})
    assert err.field == "name" and "129 bytes" in str(err) and "limit is 128" in str(err)
    err = _bad({"name": "é" * 65})  # 130 bytes in UTF-8, 65 characters
    assert "130 bytes" in str(err)
    err = _bad({"device_ids": ";".join(f"device-{i:06d}" for i in range(60))})
    assert err.field == "device_ids" and "limit is 512" in str(err)
    err = _bad({"name": "x" * 100_000})
    assert err.field == "name" and "limit" in str(err)
