"""Crypto-shredding, proven against a real earlier copy of the database, on both backends."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import vault_rows as R
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.errors import InputError, KeyUnavailable
from bastion.events import Actor, DeletionReceipt, decode_event, encode_event
from bastion.keys.provider import WrappedKey
from bastion.store import Database, open_database
from bastion.vault import RecordedPlan, Vault, codec

Recorded = Callable[[str, list[tuple[str, str]]], RecordedPlan]
OPERATOR = Actor(id="dpo@custodian", kind="operator", role="privacy")
TABLES = ("vault_secrets", "vault_subjects", "vault_pseudonyms", "vault_records")


@pytest.fixture
def copies(tmp_path: Path, backend: str) -> Iterator[Callable[[Database], Database]]:
    """Take a full copy of a vault database as it is now, as a backup would."""
    opened: list[Database] = []

    def copy(db: Database) -> Database:
        if backend == "sqlite":
            # A byte-for-byte copy of the database file, as a backup or a stolen disk has it.
            db.query("PRAGMA wal_checkpoint(TRUNCATE)")
            src = Path(db.description.removeprefix("SQLite "))
            dst = tmp_path / f"copy-{uuid.uuid4().hex[:6]}.db"
            dst.write_bytes(src.read_bytes())
            assert (
                not Path(str(src) + "-wal").exists() or Path(str(src) + "-wal").stat().st_size == 0
            )
            out = open_database(f"sqlite:///{dst}")
        else:
            schema = f"c_{uuid.uuid4().hex[:12]}"
            src_schema = db.schema  # type: ignore[attr-defined]
            with db.transaction() as cur:
                cur.execute(f"CREATE SCHEMA {schema}")
                for table in TABLES:
                    cur.execute(
                        f"CREATE TABLE {schema}.{table} AS SELECT * FROM {src_schema}.{table}"
                    )
            out = open_database(db.dsn, schema=schema)  # type: ignore[attr-defined]
        opened.append(out)
        return out

    yield copy
    for d in opened:
        if backend == "postgresql":
            d.drop_schema()  # type: ignore[attr-defined]
        d.close()


def _load(vault: Vault) -> tuple[str, str]:
    vault.ingest_rows("users", R.numbered([R.user(1), R.user(2)]))
    vault.ingest_rows("events", R.numbered([R.event(i, 1 + i % 2) for i in range(20)]))
    t1, t2 = vault.pseudonym_of("u00001"), vault.pseudonym_of("u00002")
    assert t1 and t2
    return t1, t2


def test_shred_returns_a_receipt_and_values_no_longer_open(
    any_vault: Vault, recorded: Recorded
) -> None:
    t1, t2 = _load(any_vault)
    receipt = any_vault.shred("u00001", OPERATOR, "GDPR Art. 17 request #4411")
    assert isinstance(receipt, DeletionReceipt)
    assert receipt.records_affected == 1 + 10
    assert receipt.pseudonyms_removed == 3  # the user id and two device ids
    assert "u00001" not in encode_event(receipt).decode()
    assert receipt.subject_hash == any_vault.subject_hash("u00001")
    assert receipt.subject_hash != any_vault.subject_hash("u00002")
    assert decode_event(encode_event(receipt)) == receipt
    with pytest.raises(KeyUnavailable, match="shredded"):
        any_vault.open(recorded("users", [(t1, "email")]))
    with pytest.raises(KeyUnavailable):
        any_vault.open(recorded("events", [("e00000000", "ts")]))  # an event of user 1
    # Everyone else is untouched.
    assert any_vault.open(recorded("users", [(t2, "email")])).get_value(t2, "email") == (
        "person2@example.com"
    )
    assert (
        any_vault.open(recorded("events", [("e00000001", "user_id")])).get_value(
            "e00000001", "user_id"
        )
        == "u00002"
    )


def test_pseudonym_mappings_are_gone_after_shred(vault: Vault) -> None:
    _load(vault)
    vault.shred("u00001", OPERATOR, "erasure")
    assert vault.pseudonym_of("u00001") is None
    assert vault.pseudonym_of("dev-1-a") is None
    assert vault.subject_records("u00001") == []
    assert vault.pseudonym_of("dev-2-a") is not None
    # The same id arriving again (a late file, a replayed batch) is refused, naming the row:
    # storing it would bring the erased person back under a new key.
    with pytest.raises(InputError) as err:
        vault.ingest_rows("users", R.numbered([R.user(2), R.user(1)]))
    assert err.value.row == 2 and err.value.field == "user_id"
    assert "erased" in str(err.value)
    assert vault.pseudonym_of("u00001") is None


def test_an_earlier_copy_of_the_database_cannot_open_shredded_values(
    any_vault: Vault, recorded: Recorded, copies: Callable[[Database], Database], clock: FixedClock
) -> None:
    t1, t2 = _load(any_vault)
    old_db = copies(any_vault.db)  # the backup, taken before the shred
    any_vault.shred("u00001", OPERATOR, "erasure")
    # Open the backup with the custodian's live keys: everything an insider could have.
    old = Vault(old_db, any_vault.provider, default_catalog(), clock)
    # The backup still holds user 1's record, wrapped data key and pseudonym...
    assert old.pseudonym_of("u00001") == t1
    row = old_db.query(
        "SELECT kek_version, wrapped, dek_version FROM vault_subjects WHERE token = ?", (t1,)
    )
    assert row, "the old copy must still hold the wrapped data key for this test to mean anything"
    # ...and the KEK still unwraps that data key...
    dek = any_vault.provider.unwrap(
        WrappedKey(int(row[0][0]), bytes(row[0][1])), codec.dek_aad(t1, int(row[0][2]))
    )
    # ...but the values do not open: the erasure secret was never in the database.
    with pytest.raises(KeyUnavailable):
        old.open(recorded("users", [(t1, "email")]))
    # Nor does any erasure secret that still exists turn that data key into the field key.
    sealed = bytes(
        old_db.query("SELECT sealed FROM vault_records WHERE record_key = ?", (t1,))[0][0]
    )
    blob = codec.unpack_sealed(sealed)["email"]
    aad = codec.field_aad("users", t1, t1, 1, "email")
    remaining = any_vault.provider.erasure.get_many(any_vault.provider.erasure.refs())
    assert remaining and t1 not in remaining
    for secret in remaining.values():
        key = codec.derive_field_key(dek, secret, t1, 1)
        with pytest.raises(InvalidTag):
            AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    # The backup is still good for everyone who was not shredded.
    assert old.open(recorded("users", [(t2, "email")])).get_value(t2, "email") == (
        "person2@example.com"
    )


def test_shred_unknown_or_twice(vault: Vault) -> None:
    _load(vault)
    with pytest.raises(InputError, match="no such subject"):
        vault.shred("u99999", OPERATOR, "erasure")
    vault.shred("u00002", OPERATOR, "erasure")
    with pytest.raises(InputError, match="no such subject"):
        vault.shred("u00002", OPERATOR, "erasure")
    # A device id is not a subject.
    with pytest.raises(InputError, match="no such subject"):
        vault.shred("dev-1-a", OPERATOR, "erasure")


def test_shred_leaves_dead_records_for_a_later_purge(vault: Vault) -> None:
    _load(vault)
    vault.shred("u00001", OPERATOR, "erasure")
    stats = vault.stats()
    assert stats.dead_records == 11  # not deleted synchronously: the shred did constant work
    assert stats.subjects == 1 and stats.erasure_secrets == 1
    assert vault.purge_shredded(limit=5) == 5
    assert vault.purge_shredded() == 6
    assert vault.stats().dead_records == 0
    assert vault.stats().records == {"users": 1, "videos": 0, "events": 10}


def test_orphan_erasure_secrets_are_swept(vault: Vault) -> None:
    _load(vault)
    vault.provider.erasure.create_many(["ps_orphan"])
    assert vault.sweep_orphan_secrets() == 1
    assert vault.provider.erasure.count() == 2


def test_erasure_store_in_sqlite_copy_is_not_the_database(vault: Vault, keys_dir: Path) -> None:
    """The database never holds an erasure secret: they live in the keyring's own file."""
    _load(vault)
    secrets = vault.provider.erasure.get_many(vault.provider.erasure.refs())
    conn = sqlite3.connect(keys_dir / "erasure.db")
    assert conn.execute("SELECT COUNT(*) FROM erasure_secrets").fetchone()[0] == 2
    conn.close()
    for table in TABLES:
        for row in vault.db.query(f"SELECT * FROM {table}"):
            for cell in row:
                if isinstance(cell, bytes | memoryview):
                    assert not any(s in bytes(cell) for s in secrets.values())
