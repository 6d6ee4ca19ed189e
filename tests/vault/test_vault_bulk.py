"""The bulk paths of ingest and open: columnar sealing, Arrow batches, COPY loads overlapped
with sealing, and opening blobs field by field (both backends)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import vault_rows as R

from bastion.catalog import FieldType, Value, default_catalog
from bastion.errors import InputError, IntegrityError
from bastion.vault import Vault, codec, ingest_file
from bastion.vault.pseudonyms import new_tokens
from bastion.vault.sealing import DatasetLayout

Recorded = Callable[..., Any]
SEALED_EVENT_FIELDS = [f.name for f in DatasetLayout.of(default_catalog().dataset("events")).sealed]


def _forget_events(vault: Vault) -> None:
    with vault.db.transaction() as cur:
        cur.execute("DELETE FROM vault_records WHERE dataset = ?", ("events",))


def _open_all(vault: Vault, recorded: Recorded, dataset: str) -> dict[str, dict[str, Value]]:
    records: list[str] = []
    while page := vault.list_records(dataset, after=records[-1] if records else None):
        records += page
    spec = default_catalog().dataset(dataset)
    opened = vault.open(recorded(dataset, [(r, f.name) for r in records for f in spec.fields]))
    return opened.by_record()


COLUMN_VALUES: dict[FieldType, list[Any]] = {
    FieldType.STRING: ["a", None, 'Zoë "q" \\ 日本', "", "x" * 50],
    FieldType.INT: [0, -5, None, 10**18],
    FieldType.FLOAT: [0.1 + 0.2, None, -0.0, 1e16, 100.0],
    FieldType.BOOL: [True, False, None],
    FieldType.DATE: [date(1990, 5, 17), None],
    FieldType.TIMESTAMP: [
        datetime(2026, 1, 3, 10, 11, 12, tzinfo=UTC),
        datetime(2026, 1, 3, 10, 11, 12, 5, tzinfo=UTC),
        datetime(2026, 1, 3, 10, 11, 12),
        None,
    ],
    FieldType.STRING_LIST: [["a", "b;c"], [], None, ['q"uote', "back\\slash", "nl\n"], ["日本"]],
    FieldType.GEO: [(37.774929, -122.419416), None, (-90.0, 180.0)],
}


@pytest.mark.parametrize("ftype", list(FieldType))
def test_column_codecs_agree_with_value_codecs(ftype: FieldType) -> None:
    values = COLUMN_VALUES[ftype]
    encoded = codec.column_encoder(ftype)(values)
    assert encoded == [codec.encode_value(ftype, v) for v in values]
    present = [v for v in values if v is not None]
    assert codec.column_encoder(ftype)(present) == [codec.encode_value(ftype, v) for v in present]
    decoded = codec.column_decoder(ftype)(encoded)
    assert decoded == [codec.decode_value(ftype, e) for e in encoded]


def test_new_tokens_are_distinct_pseudonyms() -> None:
    tokens = new_tokens(500)
    assert len(set(tokens)) == 500
    for token in tokens:
        assert token.startswith("ps_") and len(token) == 23
        assert set(token[3:]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_parquet_jsonl_and_rows_ingest_open_to_the_same_values(
    vault: Vault, recorded: Recorded, tmp_path: Path
) -> None:
    users = [R.user(i) for i in range(7)]
    events = [R.event(i, i % 7, campaign_id=None if i % 2 else f"c{i}") for i in range(40)]
    events[3]["device_id"] = None
    vault.ingest_rows("users", R.numbered(users))
    typed = [
        {
            **e,
            "ts": datetime.fromisoformat(e["ts"]),
            "day": date.fromisoformat(e["day"]),
        }
        for e in events
    ]
    pq.write_table(pa.Table.from_pylist(typed), tmp_path / "e.parquet")
    result = ingest_file(vault, "events", tmp_path / "e.parquet", batch_size=9)
    assert result.rows == 40 and result.sealed_values == 40 * len(SEALED_EVENT_FIELDS)
    from_parquet = _open_all(vault, recorded, "events")
    # The same rows again, as JSONL and as dicts, into fresh vault state: same values out.
    _forget_events(vault)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    ingest_file(vault, "events", path, batch_size=7)
    assert _open_all(vault, recorded, "events") == from_parquet
    _forget_events(vault)
    vault.ingest_rows("events", R.numbered(events), batch_size=40)
    assert _open_all(vault, recorded, "events") == from_parquet
    some = next(iter(from_parquet.values()))
    assert some["ts"] == datetime(2026, 1, 3, 10, 11, 12, tzinfo=UTC)
    assert some["day"] == date(2026, 1, 3)


def test_subject_record_counts_across_batches(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(i) for i in range(3)]))
    # User 0 and 1 have keys already; users 5 and 6 get theirs in the first batch, and more
    # of their events come in later batches.
    owners = [5, 6, 0, 5, 1, 6, 5, 5, 0, 6, 6]
    vault.ingest_rows(
        "events", R.numbered([R.event(i, u) for i, u in enumerate(owners)]), batch_size=3
    )
    counts = dict(vault.db.query("SELECT token, records FROM vault_subjects"))
    for user in (0, 1, 2, 5, 6):
        token = vault.pseudonym_of(f"u{user:05d}")
        assert token is not None
        want = 1 + owners.count(user) if user < 3 else owners.count(user)
        assert counts[token] == want, user


def test_duplicate_in_an_earlier_batch_wins_over_a_later_bad_row(vault: Vault) -> None:
    vault.ingest_rows("events", R.numbered([R.event(100, 1)]))
    rows = [R.event(i, 1) for i in range(10)]
    rows[4] = R.event(100, 1)  # already stored: row 5, in the second batch of 3
    rows[8]["watch_time_s"] = "long"  # bad: row 9, in the third batch
    with pytest.raises(InputError) as exc:
        vault.ingest_rows("events", R.numbered(rows), batch_size=3)
    assert (exc.value.row, exc.value.field) == (5, "event_id")
    assert "already stored" in str(exc.value)
    assert int(vault.db.query("SELECT COUNT(*) FROM vault_records")[0][0]) == 1


def test_duplicate_in_the_last_batch(vault: Vault) -> None:
    vault.ingest_rows("events", R.numbered([R.event(100, 1)]))
    rows = [R.event(i, 1) for i in range(7)] + [R.event(100, 2)]
    with pytest.raises(InputError, match="already stored") as exc:
        vault.ingest_rows("events", R.numbered(rows), batch_size=3)
    assert exc.value.row == 8
    assert int(vault.db.query("SELECT COUNT(*) FROM vault_records")[0][0]) == 1
    assert int(vault.db.query("SELECT COUNT(*) FROM vault_subjects")[0][0]) == 1


def test_bad_parquet_row_in_a_later_batch_rolls_back_everything(
    vault: Vault, tmp_path: Path
) -> None:
    rows = [R.event(i, i % 3) for i in range(25)]
    rows[21]["region"] = "mars"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    with pytest.raises(InputError) as exc:
        ingest_file(vault, "events", tmp_path / "e.parquet", batch_size=4)
    assert (exc.value.row, exc.value.field) == (22, "region")
    assert str(exc.value).startswith(f"file {tmp_path / 'e.parquet'}, row 22, dataset 'events'")
    for table in ("vault_records", "vault_subjects", "vault_pseudonyms"):
        assert int(vault.db.query(f"SELECT COUNT(*) FROM {table}")[0][0]) == 0
    assert vault.provider.erasure.count() == 0


def test_open_reads_a_blob_whatever_its_field_order(vault: Vault, recorded: Recorded) -> None:
    vault.ingest_rows("events", R.numbered([R.event(1, 1), R.event(2, 1)]))
    want = _open_all(vault, recorded, "events")
    (blob,) = vault.db.query("SELECT sealed FROM vault_records WHERE record_key = 'e00000001'")[0]
    parts = codec.unpack_sealed(bytes(blob))
    rebuilt: list[bytes] = []
    for name in reversed(list(parts)):  # same ciphertexts, fields in reverse order
        rebuilt += [codec.field_header(name), codec.blob_part(parts[name])]
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_records SET sealed = ? WHERE record_key = ?",
            (codec.pack_sealed(rebuilt), "e00000001"),
        )
    assert _open_all(vault, recorded, "events") == want
    one = vault.open(recorded("events", [("e00000001", "ts"), ("e00000001", "event_type")]))
    assert one.get_value("e00000001", "ts") == want["e00000001"]["ts"]


def test_open_keeps_the_plan_order(vault: Vault, recorded: Recorded) -> None:
    vault.ingest_rows("events", R.numbered([R.event(i, 1) for i in range(3)]))
    pairs = [
        ("e00000002", "device_id"),
        ("e00000000", "ts"),
        ("e00000002", "event_id"),
        ("e00000000", "region"),
        ("e00000001", "watch_time_s"),
    ]
    opened = vault.open(recorded("events", pairs))
    # Grouped by record in order of first appearance, each record's pairs in plan order.
    assert [(ref.record, ref.field) for ref in opened] == [
        pairs[0],
        pairs[2],
        pairs[1],
        pairs[3],
        pairs[4],
    ]
    assert opened.get_value("e00000000", "region") == "us-west"
    assert opened.get_value("e00000001", "watch_time_s") == 13.5


def test_clear_json_holds_public_values_and_pseudonyms(vault: Vault) -> None:
    vault.ingest_rows("events", R.numbered([R.event(1, 1, device_id=None)]))
    (clear,) = vault.db.query("SELECT clear FROM vault_records")[0]
    values = json.loads(clear)
    assert values == {
        "event_type": "view",
        "day": "2026-01-03",
        "age_band": "25-34",
        "region": "us-west",
        "user_id": vault.pseudonym_of("u00001"),
        "device_id": None,
    }


def _reverse_blob(vault: Vault, record: str) -> None:
    (blob,) = vault.db.query("SELECT sealed FROM vault_records WHERE record_key = ?", (record,))[0]
    parts = codec.unpack_sealed(bytes(blob))
    rebuilt: list[bytes] = []
    for name in reversed(list(parts)):
        rebuilt += [codec.field_header(name), codec.blob_part(parts[name])]
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_records SET sealed = ? WHERE record_key = ?",
            (codec.pack_sealed(rebuilt), record),
        )


@pytest.mark.parametrize(
    "fields",
    [SEALED_EVENT_FIELDS, ["ts", "event_id"], ["device_id"], ["revenue_usd", "user_id", "ts"]],
)
def test_bulk_open_of_sealed_fields_only(
    vault: Vault, recorded: Recorded, fields: list[str]
) -> None:
    rows = [R.event(i, i % 3, revenue_usd=0.25 * i if i % 2 else None) for i in range(9)]
    vault.ingest_rows("events", R.numbered(rows))
    records = vault.list_records("events")
    want = {
        r: {f: v for f, v in values.items() if f in fields}
        for r, values in _open_all(vault, recorded, "events").items()
    }
    _reverse_blob(vault, records[4])  # one record in another field order: read by name
    opened = vault.open(recorded("events", [(r, f) for r in records for f in fields]))
    assert [(ref.record, ref.field) for ref in opened] == [(r, f) for r in records for f in fields]
    assert opened.by_record() == want
    assert opened.get_value(records[3], fields[0]) == want[records[3]][fields[0]]


def test_bulk_open_of_a_tampered_value_fails(vault: Vault, recorded: Recorded) -> None:
    vault.ingest_rows("events", R.numbered([R.event(i, 1) for i in range(4)]))
    records = vault.list_records("events")
    (blob,) = vault.db.query(
        "SELECT sealed FROM vault_records WHERE record_key = ?", (records[2],)
    )[0]
    tampered = bytearray(bytes(blob))
    tampered[-1] ^= 1  # the last field's tag
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_records SET sealed = ? WHERE record_key = ?",
            (bytes(tampered), records[2]),
        )
    plan = [(r, f) for r in records for f in SEALED_EVENT_FIELDS]
    with pytest.raises(IntegrityError, match="failed authentication") as exc:
        vault.open(recorded("events", plan))
    assert SEALED_EVENT_FIELDS[-1] in str(exc.value)
    # Fields before the tampered one still open.
    ok = vault.open(recorded("events", [(records[2], SEALED_EVENT_FIELDS[0])]))
    assert ok.get_value(records[2], SEALED_EVENT_FIELDS[0]) == records[2]


def test_bulk_open_of_a_truncated_blob_fails(vault: Vault, recorded: Recorded) -> None:
    vault.ingest_rows("events", R.numbered([R.event(i, 1) for i in range(3)]))
    records = vault.list_records("events")
    (blob,) = vault.db.query(
        "SELECT sealed FROM vault_records WHERE record_key = ?", (records[0],)
    )[0]
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_records SET sealed = ? WHERE record_key = ?",
            (bytes(blob)[:-30], records[0]),
        )
    with pytest.raises(IntegrityError):
        vault.open(recorded("events", [(r, f) for r in records for f in SEALED_EVENT_FIELDS]))
