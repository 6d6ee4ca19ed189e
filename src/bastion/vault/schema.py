"""The vault's tables, its writer lock, and small SQL helpers shared by its modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from bastion.store import Cursor

# Every writer of keys or records takes this lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
# advisory transaction lock), so an ingest, a shred and a rotation never interleave.
VAULT_LOCK = "vault:keys"
IN_CHUNK = 500
PG_ANY_CHUNK = 5000

SCHEMA = [
    # Vault-wide secrets wrapped by the KEK (the identity secret behind pseudonym indexes).
    """CREATE TABLE IF NOT EXISTS vault_secrets (
        name TEXT PRIMARY KEY,
        kek_version {int} NOT NULL,
        wrapped {blob} NOT NULL)""",
    # One row per subject: its data key wrapped by KEK ``kek_version``. ``token`` is the
    # subject's pseudonym; the subject id itself is stored nowhere in the vault.
    """CREATE TABLE IF NOT EXISTS vault_subjects (
        token TEXT PRIMARY KEY,
        dek_version {int} NOT NULL,
        kek_version {int} NOT NULL,
        wrapped {blob} NOT NULL,
        records {int} NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS vault_subjects_kek ON vault_subjects (kek_version)",
    # HMAC index of an identifying value -> its random token, and the subject who owns it.
    """CREATE TABLE IF NOT EXISTS vault_pseudonyms (
        idx TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        owner TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS vault_pseudonyms_owner ON vault_pseudonyms (owner)",
    # One row per record: public values and pseudonyms in ``clear`` (JSON), everything else
    # sealed field by field in ``sealed`` (see codec.unpack_sealed).
    """CREATE TABLE IF NOT EXISTS vault_records (
        dataset TEXT NOT NULL,
        record_key TEXT NOT NULL,
        subject TEXT NOT NULL,
        clear TEXT NOT NULL,
        sealed {blob} NOT NULL,
        PRIMARY KEY (dataset, record_key))""",
    "CREATE INDEX IF NOT EXISTS vault_records_subject ON vault_records (subject, dataset)",
    # The change feed: one row per record change, in commit order (every writer holds
    # VAULT_LOCK while it inserts, so ``seq`` order is commit order). Keys, versions and field
    # names only: a follower learns *that* a record changed, never to what.
    """CREATE TABLE IF NOT EXISTS vault_changes (
        seq {serial},
        dataset TEXT NOT NULL,
        record_key TEXT NOT NULL,
        version {int} NOT NULL,
        op TEXT NOT NULL,
        fields TEXT NOT NULL,
        at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS vault_changes_dataset ON vault_changes (dataset, seq)",
    # Keyed hashes (``Vault.subject_hash``) of shredded subjects: a late write for an erased
    # person is refused (410) instead of quietly bringing them back under a new data key.
    """CREATE TABLE IF NOT EXISTS vault_erased (
        subject_hash TEXT PRIMARY KEY,
        at TEXT NOT NULL)""",
    # The first answer to each (principal, Idempotency-Key), so a retried write returns it
    # without writing or logging twice; ``request_sha256`` refuses the key with another body.
    """CREATE TABLE IF NOT EXISTS vault_idempotency (
        principal TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        status {int} NOT NULL,
        response TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (principal, idem_key))""",
]

# Columns added to tables that earlier versions created (``Database.add_columns``).
# ``version`` counts a record's writes (ingest stores version 1); ``stored_at`` is when the
# record was first stored (retention counts from it; NULL for records stored before it).
RECORD_COLUMNS_ADDED = [
    ("version", "{int} NOT NULL DEFAULT 1"),
    ("stored_at", "TEXT"),
]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterable[Sequence[T]]:
    """Slices small enough for an ``IN (...)`` list on both backends."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


def select_in(
    cur: Cursor,
    dialect: str,
    sql: str,
    column: str,
    keys: Sequence[str],
    before: Sequence[object] = (),
) -> list[tuple[Any, ...]]:
    """Run ``sql`` (with ``{in}`` where the key test goes) for every chunk of ``keys``.

    PostgreSQL gets ``column = ANY(?)`` with one array parameter, which it parses and plans
    about twice as fast as a long ``IN (?, ?, ...)`` list; SQLite gets the list.
    """
    out: list[tuple[Any, ...]] = []
    if dialect == "postgresql":
        query = sql.replace("{in}", f"{column} = ANY(?)")
        for chunk in chunks(keys, PG_ANY_CHUNK):
            out += cur.execute(query, [*before, list(chunk)]).fetchall()
        return out
    for chunk in chunks(keys):
        query = sql.replace("{in}", f"{column} IN ({marks(len(chunk))})")
        out += cur.execute(query, [*before, *chunk]).fetchall()
    return out
