"""Opening: only recorded plans, exactly the planned values; AEAD failures never give garbage."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import vault_rows as R

from bastion.errors import InputError, IntegrityError, KeyUnavailable
from bastion.events import AccessDecision, Actor, FieldRelease, encode_event
from bastion.ledger.api import Receipt
from bastion.vault import FieldRef, ReadPlan, RecordedPlan, Vault
from bastion.vault.plan import leaf_hash

Recorded = Callable[[str, list[tuple[str, str]]], RecordedPlan]


@pytest.fixture
def loaded(vault: Vault) -> Vault:
    vault.ingest_rows("users", R.numbered([R.user(1), R.user(2, phone=None)]))
    vault.ingest_rows(
        "events",
        R.numbered(
            [
                R.event(1, 1, event_type="ad_click", campaign_id="c-9", revenue_usd=0.25),
                R.event(2, 2),
            ]
        ),
    )
    return vault


def _key(vault: Vault, user: str) -> str:
    token = vault.pseudonym_of(user)
    assert token is not None
    return token


def test_open_returns_typed_values(loaded: Vault, recorded: Recorded) -> None:
    u1 = _key(loaded, "u00001")
    fields = ["name", "email", "birth_date", "location", "device_ids", "user_id", "region"]
    opened = loaded.open(recorded("users", [(u1, f) for f in fields]))
    assert opened.by_record() == {
        u1: {
            "name": "Person Number1",
            "email": "person1@example.com",
            "birth_date": date(1990, 5, 17),
            "location": (37.7759, -122.4194),
            "device_ids": ["dev-1-a", "dev-1-b"],
            "user_id": "u00001",
            "region": "us-west",
        }
    }
    events = loaded.open(
        recorded(
            "events",
            [("e00000001", "ts"), ("e00000001", "revenue_usd"), ("e00000002", "campaign_id")],
        )
    )
    assert events.get_value("e00000001", "ts") == datetime(2026, 1, 3, 10, 11, 12, tzinfo=UTC)
    assert events.get_value("e00000001", "revenue_usd") == 0.25
    assert events.get_value("e00000002", "campaign_id") is None
    public = loaded.open(recorded("events", [("e00000001", "day"), ("e00000001", "event_type")]))
    assert public.get_value("e00000001", "day") == date(2026, 1, 3)  # typed, not JSON text
    assert public.get_value("e00000001", "event_type") == "ad_click"


def test_open_returns_only_the_planned_pairs(loaded: Vault, recorded: Recorded) -> None:
    u1, u2 = _key(loaded, "u00001"), _key(loaded, "u00002")
    opened = loaded.open(recorded("users", [(u1, "email"), (u2, "phone")]))
    assert set(opened) == {FieldRef(u1, "email"), FieldRef(u2, "phone")}
    assert opened[FieldRef(u2, "phone")] is None  # a null is sealed too, and opens as None


def test_open_needs_a_recorded_plan(loaded: Vault) -> None:
    plan = ReadPlan.of("users", [(_key(loaded, "u00001"), "email")])
    with pytest.raises(TypeError):
        loaded.open(plan)  # type: ignore[arg-type]
    # No unchecked construction: the constructor itself refuses, whatever it is given.
    with pytest.raises(TypeError, match="bind"):
        RecordedPlan(plan, (Receipt(1, b"\x00" * 32),))
    with pytest.raises(TypeError):
        RecordedPlan.bind(plan, 5, b"{}")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        RecordedPlan.bind(plan, Receipt(-1, b"\x00" * 32), b"{}")


def test_empty_plan_reads_nothing(loaded: Vault, recorded: Recorded) -> None:
    assert len(loaded.open(recorded("users", []))) == 0


def test_plan_rejects_duplicates_and_non_refs() -> None:
    with pytest.raises(InputError, match="twice"):
        ReadPlan("users", (FieldRef("a", "b"), FieldRef("a", "b")))
    with pytest.raises(InputError):
        ReadPlan("users", [FieldRef("a", "b")])  # type: ignore[arg-type]


def test_unknown_field_record_and_dataset(loaded: Vault, recorded: Recorded) -> None:
    u1 = _key(loaded, "u00001")
    with pytest.raises(InputError, match="no such field"):
        loaded.open(recorded("users", [(u1, "shoe_size")]))
    with pytest.raises(InputError, match="no such record"):
        loaded.open(recorded("users", [(u1, "email"), ("ps_nobody", "email")]))
    with pytest.raises(InputError, match="unknown dataset"):
        loaded.open(recorded("nope", [(u1, "email")]))


def _entry(released: list[tuple[str, str, str]]) -> bytes:
    event = AccessDecision(
        actor=Actor(id="analyst-7", kind="principal"),
        reason="support ticket",
        at="2026-01-01T00:00:00.000000Z",
        request_id="r1",
        action="read",
        dataset="users",
        decision="allow",
        released=[
            FieldRelease(dataset=d, record=r, field=f, transform="clear") for d, r, f in released
        ],
    )
    return encode_event(event)


def test_bound_plan_checks_its_ledger_entry(loaded: Vault) -> None:
    u1 = _key(loaded, "u00001")
    plan = ReadPlan.of("users", [(u1, "email")])
    entry = _entry([("users", u1, "email")])
    bound = RecordedPlan.bind(plan, Receipt(3, leaf_hash(entry)), entry)
    assert loaded.open(bound).get_value(u1, "email") == "person1@example.com"
    # The receipt is for another entry.
    with pytest.raises(IntegrityError, match="leaf hash"):
        RecordedPlan.bind(plan, Receipt(3, b"\x00" * 32), entry)
    # The entry does not list what the plan opens.
    other = _entry([("users", u1, "name")])
    with pytest.raises(InputError, match="does not list"):
        RecordedPlan.bind(plan, Receipt(4, leaf_hash(other)), other)


def _sealed(vault: Vault, dataset: str, record: str) -> bytes:
    rows = vault.db.query(
        "SELECT sealed FROM vault_records WHERE dataset = ? AND record_key = ?", (dataset, record)
    )
    return bytes(rows[0][0])


def _set_sealed(vault: Vault, dataset: str, record: str, sealed: bytes) -> None:
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_records SET sealed = ? WHERE dataset = ? AND record_key = ?",
            (sealed, dataset, record),
        )


def test_tampered_ciphertext_is_an_integrity_error(loaded: Vault, recorded: Recorded) -> None:
    u1 = _key(loaded, "u00001")
    blob = bytearray(_sealed(loaded, "users", u1))
    blob[-3] ^= 0x40  # inside the last field's ciphertext or tag
    _set_sealed(loaded, "users", u1, bytes(blob))
    with pytest.raises(IntegrityError, match="failed authentication") as exc:
        loaded.open(recorded("users", [(u1, "language")]))
    assert "en-US" not in str(exc.value)


def test_ciphertext_moved_to_another_record_fails(loaded: Vault, recorded: Recorded) -> None:
    u1, u2 = _key(loaded, "u00001"), _key(loaded, "u00002")
    # Give user 2's row user 1's sealed blob (same dataset and fields, another record/subject).
    _set_sealed(loaded, "users", u2, _sealed(loaded, "users", u1))
    with pytest.raises(IntegrityError):
        loaded.open(recorded("users", [(u2, "email")]))


def test_ciphertext_moved_between_events_of_one_subject_fails(
    loaded: Vault, recorded: Recorded
) -> None:
    loaded.ingest_rows("events", R.numbered([R.event(3, 1)]))
    _set_sealed(loaded, "events", "e00000003", _sealed(loaded, "events", "e00000001"))
    with pytest.raises(IntegrityError):
        loaded.open(recorded("events", [("e00000003", "ts")]))


def test_ciphertext_moved_to_another_field_fails(loaded: Vault, recorded: Recorded) -> None:
    from bastion.vault import codec

    u1 = _key(loaded, "u00001")
    parts = codec.unpack_sealed(_sealed(loaded, "users", u1))
    parts["phone"], parts["email"] = parts["email"], parts["phone"]
    rebuilt: list[bytes] = []
    for name, blob in parts.items():
        rebuilt += [codec.field_header(name), codec.blob_part(blob)]
    _set_sealed(loaded, "users", u1, codec.pack_sealed(rebuilt))
    with pytest.raises(IntegrityError):
        loaded.open(recorded("users", [(u1, "email")]))


def test_tampered_wrapped_key_is_an_integrity_error(loaded: Vault, recorded: Recorded) -> None:
    u1 = _key(loaded, "u00001")
    wrapped = bytearray(
        loaded.db.query("SELECT wrapped FROM vault_subjects WHERE token = ?", (u1,))[0][0]
    )
    wrapped[20] ^= 0x01
    with loaded.db.transaction() as cur:
        cur.execute("UPDATE vault_subjects SET wrapped = ? WHERE token = ?", (bytes(wrapped), u1))
    with pytest.raises(IntegrityError):
        loaded.open(recorded("users", [(u1, "email")]))


def test_wrapped_key_moved_to_another_subject_fails(loaded: Vault, recorded: Recorded) -> None:
    u1, u2 = _key(loaded, "u00001"), _key(loaded, "u00002")
    w1 = loaded.db.query("SELECT wrapped FROM vault_subjects WHERE token = ?", (u1,))[0][0]
    with loaded.db.transaction() as cur:
        cur.execute("UPDATE vault_subjects SET wrapped = ? WHERE token = ?", (w1, u2))
    with pytest.raises(IntegrityError):
        loaded.open(recorded("users", [(u2, "email")]))


def test_missing_kek_is_key_unavailable(loaded: Vault, recorded: Recorded, keys_dir: Path) -> None:
    u1 = _key(loaded, "u00001")
    loaded.provider.rotate()  # a new KEK, but the data keys were never rewrapped...
    (keys_dir / "kek-v000001.key").unlink()
    loaded.provider.refresh()  # ...and version 1 is lost
    with pytest.raises(KeyUnavailable, match="version 1"):
        loaded.open(recorded("users", [(u1, "email")]))


def test_missing_erasure_secret_is_key_unavailable(loaded: Vault, recorded: Recorded) -> None:
    u1 = _key(loaded, "u00001")
    loaded.provider.erasure.destroy(u1)
    with pytest.raises(KeyUnavailable):
        loaded.open(recorded("users", [(u1, "email")]))


def test_clear_reads_refuse_sealed_fields(loaded: Vault) -> None:
    u1 = _key(loaded, "u00001")
    with pytest.raises(InputError, match="sealed") as exc:
        loaded.clear_values("users", [u1], ["email"])
    assert exc.value.field == "email"
    clear = loaded.clear_values("users", [u1], ["region", "user_id"])
    assert clear == {u1: {"region": "us-west", "user_id": u1}}


def test_listing_and_subject_lookup_decrypt_nothing(loaded: Vault) -> None:
    loaded.ingest_rows("events", R.numbered([R.event(i, 1) for i in range(10, 25)]))
    pages, after = [], None
    while page := loaded.list_records("events", after=after, limit=4):
        pages.append(page)
        after = page[-1]
    flat = [k for p in pages for k in p]
    assert flat == sorted(flat) and len(flat) == 17 and len(set(flat)) == 17
    refs = loaded.subject_records("u00001")
    assert {r.dataset for r in refs} == {"users", "events"}
    assert len(refs) == 1 + 1 + 15
    assert loaded.subject_records("u00001", "users")[0].record == _key(loaded, "u00001")
    assert loaded.subject_records("u99999") == []
    assert loaded.record_key("users", "u00001") == _key(loaded, "u00001")
    assert loaded.record_key("events", "e00000001") == "e00000001"
    with pytest.raises(InputError):
        loaded.list_records("events", limit=0)
