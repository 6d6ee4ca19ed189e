"""Ingest: validation, pseudonyms, all-or-nothing files and the bad-input cases (both backends)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import vault_rows as R

from bastion.clock import FixedClock
from bastion.errors import InputError
from bastion.keys.local import LocalKeyring
from bastion.store import Database, open_database
from bastion.vault import Vault, ingest_file


def _count(db: Database, table: str) -> int:
    return int(db.query(f"SELECT COUNT(*) FROM {table}")[0][0])


def _nothing_written(vault: Vault, secrets_before: int = 0) -> None:
    for table in ("vault_records", "vault_subjects", "vault_pseudonyms"):
        assert _count(vault.db, table) == 0, table
    assert vault.provider.erasure.count() == secrets_before


def test_ingest_seals_everything_but_public_fields(vault: Vault) -> None:
    result = vault.ingest_rows("users", R.numbered([R.user(i) for i in range(5)]))
    assert (result.rows, result.new_subjects) == (5, 5)
    assert result.sealed_values == 5 * 11  # 13 fields, 2 public
    assert result.new_pseudonyms == 5 * 3  # user id and two device ids each
    (clear, sealed), *_ = vault.db.query("SELECT clear, sealed FROM vault_records")
    values = json.loads(clear)
    assert set(values) == {"region", "age_band", "user_id", "device_ids"}
    assert values["user_id"].startswith("ps_") and values["user_id"] != "u00000"
    raw = bytes(sealed)
    for plain in (b"person0@example.com", b"Person Number0", b"u00000", b"dev-0-a", b"1990-05-17"):
        assert plain not in raw


def test_no_plaintext_anywhere_in_the_sqlite_file(tmp_path: Path, clock: FixedClock) -> None:
    # A whole-file check, so it runs on the SQLite backend only; the row-level checks above
    # run on both backends.
    db = open_database(f"sqlite:///{tmp_path / 'v.db'}")
    provider = LocalKeyring.create(tmp_path / "keys")
    vault = R.make_vault(db, provider, clock)
    vault.ingest_rows("users", R.numbered([R.user(i) for i in range(20)]))
    db.query("PRAGMA wal_checkpoint(TRUNCATE)")
    data = (tmp_path / "v.db").read_bytes()
    assert len(data) > 4096
    for plain in (b"person7@example.com", b"u00007", b"dev-7-b", b"+15550000007"):
        assert plain not in data
    provider.close()
    db.close()


def test_pseudonyms_join_across_datasets(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(1), R.user(2)]))
    vault.ingest_rows("videos", R.numbered([R.video(1, creator_n=1)]))
    vault.ingest_rows("events", R.numbered([R.event(1, user_n=1), R.event(2, user_n=2)]))
    token = vault.pseudonym_of("u00001")
    assert token is not None
    users = vault.clear_values("users", [token], ["user_id", "device_ids"])
    videos = vault.clear_values("videos", ["v00001"], ["creator_id"])
    events = vault.clear_values("events", ["e00000001"], ["user_id", "device_id"])
    assert users[token]["user_id"] == videos["v00001"]["creator_id"] == token
    assert events["e00000001"]["user_id"] == token
    assert events["e00000001"]["device_id"] == users[token]["device_ids"][0]  # type: ignore[index]
    assert vault.pseudonym_of("u00002") != token
    assert vault.stats().subjects == 2  # videos and events reuse the users' data keys


def test_same_subject_across_files_reuses_its_key(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(1)]))
    res = vault.ingest_rows("events", R.numbered([R.event(i, user_n=1) for i in range(30)]))
    assert res.new_subjects == 0
    assert vault.db.query("SELECT records FROM vault_subjects")[0][0] == 31


def test_unknown_dataset(vault: Vault) -> None:
    with pytest.raises(InputError, match="unknown dataset") as exc:
        vault.ingest_rows("nope", R.numbered([R.user(1)]))
    assert exc.value.dataset == "nope"
    _nothing_written(vault)


def _rows_with_bad_row_at(n_rows: int, bad_at: int, **bad: Any) -> list[tuple[int, dict[str, Any]]]:
    rows = [R.user(i) for i in range(n_rows)]
    rows[bad_at - 1] = R.user(bad_at - 1, **bad)
    return R.numbered(rows)


def test_wrong_type_rolls_back_the_whole_file(vault: Vault) -> None:
    # Two full batches are written inside the transaction before row 25 fails.
    rows = _rows_with_bad_row_at(30, 25, birth_date="not-a-date")
    with pytest.raises(InputError) as exc:
        vault.ingest_rows("users", rows, source="users.csv", batch_size=10)
    e = exc.value
    assert (e.file, e.row, e.dataset, e.field) == ("users.csv", 25, "users", "birth_date")
    assert "ISO 8601 date" in e.reason
    _nothing_written(vault)


def test_missing_subject_id(vault: Vault) -> None:
    with pytest.raises(InputError, match="missing subject id") as exc:
        vault.ingest_rows("events", R.numbered([R.event(1, 1), R.event(2, 1, user_id="")]))
    assert (exc.value.row, exc.value.field) == (2, "user_id")
    _nothing_written(vault)


def test_duplicate_record_id_within_a_batch(vault: Vault) -> None:
    rows = R.numbered([R.user(1), R.user(2), R.user(1)])
    with pytest.raises(InputError, match="duplicate record id") as exc:
        vault.ingest_rows("users", rows, source="f.jsonl")
    assert (exc.value.row, exc.value.field) == (3, "user_id")
    _nothing_written(vault)


def test_duplicate_record_id_across_batches(vault: Vault) -> None:
    rows = R.numbered([R.event(i, 1) for i in range(12)] + [R.event(3, 1)])
    with pytest.raises(InputError, match="duplicate record id") as exc:
        vault.ingest_rows("events", rows, batch_size=5)
    assert (exc.value.row, exc.value.field) == (13, "event_id")
    _nothing_written(vault)


def test_duplicate_record_id_already_stored(vault: Vault) -> None:
    vault.ingest_rows("events", R.numbered([R.event(i, 1) for i in range(3)]))
    before = _count(vault.db, "vault_records")
    with pytest.raises(InputError, match="already stored") as exc:
        vault.ingest_rows("events", R.numbered([R.event(10, 2), R.event(1, 2)]))
    assert exc.value.row == 2
    assert _count(vault.db, "vault_records") == before
    assert _count(vault.db, "vault_subjects") == 1  # user 2's new key was rolled back
    assert vault.provider.erasure.count() == 1  # ...and its erasure secret destroyed


def test_oversize_value(vault: Vault) -> None:
    with pytest.raises(InputError, match="limit") as exc:
        vault.ingest_rows("users", R.numbered([R.user(1, name="x" * 129)]))
    assert exc.value.field == "name"
    _nothing_written(vault)


def test_error_messages_never_carry_the_value(vault: Vault) -> None:
    secret = "sensitive-value-123"
    with pytest.raises(InputError) as exc:
        vault.ingest_rows("users", R.numbered([R.user(1, birth_date=secret)]))
    assert secret not in str(exc.value)


# ---- files ---------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v)
                    for k, v in r.items()
                }
            )
    return path


def test_ingest_csv_jsonl_and_parquet_files(vault: Vault, tmp_path: Path) -> None:
    _write_csv(tmp_path / "u.csv", [R.user(i) for i in range(3)])
    _write_jsonl(tmp_path / "e.jsonl", [R.event(i, i % 3) for i in range(10)])
    videos = [R.video(i, i % 3) for i in range(4)]
    pq.write_table(pa.Table.from_pylist(videos), tmp_path / "v.parquet")
    assert ingest_file(vault, "users", tmp_path / "u.csv").rows == 3
    assert ingest_file(vault, "events", tmp_path / "e.jsonl").rows == 10
    assert ingest_file(vault, "videos", tmp_path / "v.parquet").rows == 4
    assert vault.stats().records == {"users": 3, "videos": 4, "events": 10}


def test_bad_row_in_a_file_names_file_row_and_field(vault: Vault, tmp_path: Path) -> None:
    rows = [R.event(i, 1) for i in range(8)]
    rows[5]["watch_time_s"] = "a while"
    path = _write_jsonl(tmp_path / "e.jsonl", rows)
    with pytest.raises(InputError) as exc:
        ingest_file(vault, "events", path, batch_size=2)
    assert str(exc.value).startswith(f"file {path}, row 6, dataset 'events', field 'watch_time_s'")
    _nothing_written(vault)


def test_malformed_jsonl_line(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(R.event(1, 1)) + "\n{not json\n")
    with pytest.raises(InputError, match="invalid JSON") as exc:
        ingest_file(vault, "events", path)
    assert exc.value.row == 2
    _nothing_written(vault)


def test_jsonl_line_that_is_not_an_object(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="not a JSON object"):
        ingest_file(vault, "events", path)


def test_csv_row_with_extra_values(vault: Vault, tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "u.csv", [R.user(1)])
    with open(path, "a") as fh:
        fh.write("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o\n")
    with pytest.raises(InputError, match="more values than the header") as exc:
        ingest_file(vault, "users", path)
    assert exc.value.row == 2
    _nothing_written(vault)


def test_csv_unknown_column(vault: Vault, tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "u.csv", [{**R.user(1), "shoe_size": "44"}])
    with pytest.raises(InputError, match="unknown column") as exc:
        ingest_file(vault, "users", path)
    assert exc.value.field == "shoe_size"


def test_unsupported_and_missing_files(vault: Vault, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unsupported file type"):
        ingest_file(vault, "users", tmp_path / "users.xlsx")
    with pytest.raises(InputError, match="file not found"):
        ingest_file(vault, "users", tmp_path / "missing.csv")


def test_corrupt_parquet(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "u.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="Parquet"):
        ingest_file(vault, "users", path)


def test_unknown_dataset_fails_before_reading_the_file(vault: Vault, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        ingest_file(vault, "nope", tmp_path / "missing.csv")
