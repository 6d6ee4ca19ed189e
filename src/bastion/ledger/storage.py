"""The log's SQL driver (`SqlLogStorage`): its tables and the SQL that reads and writes them, on
SQLite and PostgreSQL alike, behind the `log_storage.LogStorage` seam.

Storage follows Tessera's layout rather than one row per entry: the log keeps exactly what the
C2SP tlog-tiles API serves. A group commit therefore writes a handful of rows however many
entries it carries:

- ``ledger_state``: one row, the integrated tree size. The sequencer's compare-and-swap target.
- ``ledger_tiles``: Merkle tiles of height 8 (hashes concatenated). The rightmost tile of each
  level is rewritten as it grows; full tiles never change.
- ``ledger_bundle_chunks``: entries as the commits wrote them: one row per commit and bundle
  (the commit's stretch of it), so every entry is written once, however the batches fall.
- ``ledger_bundles``: whole entry bundles (256 uint16-length-prefixed entries) in one row: a
  bundle that one batch filled alone, or one that filled through more than
  `sequencer.MAX_BUNDLE_CHUNKS`
  small commits (rewritten whole when it fills, its chunks deleted in the same transaction, so
  reading it stays one row). Where a bundle has a whole row, that row is the bundle.
- ``ledger_checkpoints``: every signed checkpoint, with the witness cosignatures it gathered.

The functions take an open cursor so callers decide the transaction boundaries; the driver
(at the end) is what the log uses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bastion.errors import IntegrityError, StoreUnavailable
from bastion.ledger.log_storage import BundleParts, StoredCheckpoint, Writes
from bastion.ledger.tiles import bundle_prefix
from bastion.store import Cursor, Database

COMPONENT = "ledger"

DDL = [
    "CREATE TABLE IF NOT EXISTS ledger_state ( id {int} PRIMARY KEY, tree_size {int} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_tiles ("
    " tile_level {int} NOT NULL,"
    " tile_index {int} NOT NULL,"
    " hashes {blob} NOT NULL,"
    " PRIMARY KEY (tile_level, tile_index))",
    "CREATE TABLE IF NOT EXISTS ledger_bundles ("
    " bundle_index {int} PRIMARY KEY,"
    " width {int} NOT NULL,"
    " entries {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_bundle_chunks ("
    " bundle_index {int} NOT NULL,"
    " first_entry {int} NOT NULL,"
    " entry_count {int} NOT NULL,"
    " entries {blob} NOT NULL,"
    " PRIMARY KEY (bundle_index, first_entry))",
    "CREATE TABLE IF NOT EXISTS ledger_checkpoints ("
    " tree_size {int} PRIMARY KEY,"
    " root_hash {blob} NOT NULL,"
    " note TEXT NOT NULL,"
    " cosignatures TEXT NOT NULL,"
    " witnesses {int} NOT NULL,"
    " created_at TEXT NOT NULL)",
    # The single state row; a no-op once it exists.
    "INSERT INTO ledger_state (id, tree_size) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
]

SEQUENCER_LOCK = "ledger:sequencer"
PUBLISHER_LOCK = "ledger:publisher"


def create_tables(db: Database) -> None:
    db.migrate(COMPONENT, DDL)
    if db.dialect == "postgresql":
        _tune_pg_storage(db)


# PostgreSQL compresses every large value by default (pglz) before it commits. Tile hashes are
# random, so that is wasted work on the append path; entries (JSON) compress well, and lz4 does it
# several times faster than pglz.
_PG_STORAGE = [
    ("ledger_tiles", "hashes", "e", None),
    ("ledger_bundles", "entries", None, "l"),
    ("ledger_bundle_chunks", "entries", None, "l"),
]


def _tune_pg_storage(db: Database) -> None:
    """Set the columns' storage as above, once: ALTER TABLE only where it is not set yet (it
    takes an exclusive lock), and lz4 only where the server was built with it."""
    with db.transaction(lock=f"migrate:{COMPONENT}") as cur:
        row = cur.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()
        lz4 = bool(row and row[0])
        for table, column, storage, compression in _PG_STORAGE:
            current = cur.execute(
                "SELECT attstorage, attcompression FROM pg_attribute"
                " WHERE attrelid = to_regclass(?) AND attname = ?",
                (table, column),
            ).fetchone()
            if current is None:
                continue
            if storage is not None and str(current[0]) != storage:
                cur.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")
            if compression is not None and lz4 and str(current[1]) != compression:
                cur.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


# --- tree size -----------------------------------------------------------------------------


def read_tree_size(cur: Cursor, *, for_update: bool = False) -> int:
    """The integrated tree size. `for_update` (PostgreSQL only) also locks the state row until
    the transaction ends, so no other writer's compare-and-swap can move it meanwhile."""
    sql = "SELECT tree_size FROM ledger_state WHERE id = 1"
    row = cur.execute(sql + " FOR UPDATE" if for_update else sql).fetchone()
    if row is None:
        raise IntegrityError("the ledger's state row is missing; was the log initialized?")
    return int(row[0])


def swap_tree_size(cur: Cursor, old: int, added: int) -> bool:
    """Compare-and-swap the tree size from `old` to `old + added`; False if it is not `old`."""
    cur.execute(
        "UPDATE ledger_state SET tree_size = ? WHERE id = 1 AND tree_size = ?", (old + added, old)
    )
    return cur.rowcount == 1


def advance_tree_size(cur: Cursor, old: int, new: int) -> None:
    """Compare-and-swap the tree size: fails loudly if another writer moved it meanwhile."""
    if not swap_tree_size(cur, old, new - old):
        raise IntegrityError(f"tree size moved under the sequencer (expected {old})")


# --- tiles and bundles ---------------------------------------------------------------------


def read_tile(cur: Cursor, level: int, index: int) -> bytes | None:
    row = cur.execute(
        "SELECT hashes FROM ledger_tiles WHERE tile_level = ? AND tile_index = ?", (level, index)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _join_chunks(index: int, chunks: Sequence[tuple[Any, Any, Any]]) -> BundleParts:
    """A bundle from its (first_entry, entry_count, entries) chunk rows, in order, gap-checked."""
    width, parts = 0, []
    for first, count, data in chunks:
        if int(first) != width:
            raise IntegrityError(f"entry bundle {index} has a gap at entry {width}")
        width += int(count)
        parts.append(bytes(data))
    return BundleParts(width, b"".join(parts), len(parts))


def read_bundle_parts(cur: Cursor, index: int) -> BundleParts | None:
    """A bundle as stored: one whole row if there is one, else the chunks that hold it."""
    row = cur.execute(
        "SELECT width, entries FROM ledger_bundles WHERE bundle_index = ?", (index,)
    ).fetchone()
    if row is not None:
        return BundleParts(int(row[0]), bytes(row[1]), 0)
    chunks = cur.execute(
        "SELECT first_entry, entry_count, entries FROM ledger_bundle_chunks"
        " WHERE bundle_index = ? ORDER BY first_entry",
        (index,),
    ).fetchall()
    return _join_chunks(index, chunks) if chunks else None


def read_bundle(cur: Cursor, index: int) -> tuple[int, bytes] | None:
    """(width, encoded entries) of a bundle, full or partial."""
    parts = read_bundle_parts(cur, index)
    return None if parts is None else (parts.width, parts.data)


def read_full_bundles(cur: Cursor, first: int, last: int) -> list[tuple[int, int, bytes]]:
    """(index, width, data) of the bundles first..last inclusive stored as one whole row."""
    rows = cur.execute(
        "SELECT bundle_index, width, entries FROM ledger_bundles"
        " WHERE bundle_index >= ? AND bundle_index <= ? ORDER BY bundle_index",
        (first, last),
    ).fetchall()
    return [(int(i), int(w), bytes(d)) for i, w, d in rows]


def read_bundles(cur: Cursor, first: int, last: int) -> list[tuple[int, int, bytes]]:
    """(index, width, data) of every stored bundle first..last inclusive, partial one included:
    whole rows and chunked bundles alike, in two range queries."""
    rows = {
        index: (index, width, data) for index, width, data in read_full_bundles(cur, first, last)
    }
    chunks = cur.execute(
        "SELECT bundle_index, first_entry, entry_count, entries FROM ledger_bundle_chunks"
        " WHERE bundle_index >= ? AND bundle_index <= ? ORDER BY bundle_index, first_entry",
        (first, last),
    ).fetchall()
    start = 0
    for end in range(1, len(chunks) + 1):
        if end == len(chunks) or chunks[end][0] != chunks[start][0]:
            index = int(chunks[start][0])
            if index not in rows:  # a whole row, where there is one, is what readers get
                parts = _join_chunks(index, [c[1:] for c in chunks[start:end]])
                rows[index] = (index, parts.width, parts.data)
            start = end
    return [rows[index] for index in sorted(rows)]


def write_tiles(cur: Cursor, tiles: Sequence[tuple[int, int, bytes]]) -> None:
    """Upsert (level, index, hashes) rows: a partial tile is replaced by its grown self."""
    if tiles:
        cur.executemany(
            "INSERT INTO ledger_tiles (tile_level, tile_index, hashes) VALUES (?, ?, ?)"
            " ON CONFLICT (tile_level, tile_index) DO UPDATE SET hashes = excluded.hashes",
            tiles,
        )


def write_bundles(cur: Cursor, bundles: Sequence[tuple[int, int, bytes]]) -> None:
    """Write full bundles (index, width, entries) and drop the chunks they replace."""
    if bundles:
        cur.executemany(
            "INSERT INTO ledger_bundles (bundle_index, width, entries) VALUES (?, ?, ?)"
            " ON CONFLICT (bundle_index) DO UPDATE"
            " SET width = excluded.width, entries = excluded.entries",
            bundles,
        )
        cur.executemany(
            "DELETE FROM ledger_bundle_chunks WHERE bundle_index = ?", [(b[0],) for b in bundles]
        )


def write_batch_bundles(
    cur: Cursor,
    bundles: Sequence[tuple[int, int, bytes]],
    chunks: Sequence[tuple[int, int, int, bytes]],
    compacted: Sequence[int],
) -> None:
    """A batch's entries: whole bundles, chunks, and the chunks that whole bundles replace."""
    if bundles:
        cur.executemany(
            "INSERT INTO ledger_bundles (bundle_index, width, entries) VALUES (?, ?, ?)"
            " ON CONFLICT (bundle_index) DO UPDATE"
            " SET width = excluded.width, entries = excluded.entries",
            bundles,
        )
    if compacted:
        cur.executemany(
            "DELETE FROM ledger_bundle_chunks WHERE bundle_index = ?", [(i,) for i in compacted]
        )
    if chunks:
        cur.executemany(
            "INSERT INTO ledger_bundle_chunks (bundle_index, first_entry, entry_count, entries)"
            " VALUES (?, ?, ?, ?)",
            chunks,
        )


# --- checkpoints ---------------------------------------------------------------------------

_CHECKPOINT_COLUMNS = "tree_size, root_hash, note, cosignatures, witnesses, created_at"


def _checkpoint(row: tuple[object, ...] | None) -> StoredCheckpoint | None:
    if row is None:
        return None
    size, root_hash, note, cosigs, witnesses, created = row
    return StoredCheckpoint(
        int(size),  # type: ignore[call-overload]
        bytes(root_hash),  # type: ignore[call-overload]
        str(note),
        str(cosigs),
        int(witnesses),  # type: ignore[call-overload]
        str(created),
    )


def latest_checkpoint(cur: Cursor, *, min_witnesses: int = 0) -> StoredCheckpoint | None:
    """The newest checkpoint with at least `min_witnesses` cosignatures."""
    row = cur.execute(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM ledger_checkpoints WHERE witnesses >= ?"
        " ORDER BY tree_size DESC LIMIT 1",
        (min_witnesses,),
    ).fetchone()
    return _checkpoint(row)


def insert_checkpoint(cur: Cursor, cp: StoredCheckpoint) -> None:
    cur.execute(
        f"INSERT INTO ledger_checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tree_size) DO NOTHING",
        (cp.tree_size, cp.root_hash, cp.note, cp.cosignatures, cp.witnesses, cp.created_at),
    )


def record_cosignatures(cur: Cursor, size: int, cosignatures: str, witnesses: int) -> None:
    cur.execute(
        "UPDATE ledger_checkpoints SET cosignatures = ?, witnesses = ? WHERE tree_size = ?",
        (cosignatures, witnesses, size),
    )


# --- PostgreSQL: one statement per batch ------------------------------------------------------

# Everything a batch writes, as ONE statement: a single round trip, committed on its own
# (autocommit), instead of BEGIN, lock, read, writes and COMMIT one after the other. The UPDATE is
# the compare-and-swap: it takes the state row's lock (a concurrent writer waits, then re-checks
# ``tree_size = old`` against the committed row and matches nothing), and every write is
# conditional on it, so a lost race writes nothing at all.
_PG_APPEND = """
WITH cas AS (
    UPDATE ledger_state SET tree_size = %(new)b
    WHERE id = 1 AND tree_size = %(old)b
    RETURNING 1
), tiles AS (
    INSERT INTO ledger_tiles (tile_level, tile_index, hashes)
    SELECT * FROM unnest(%(tile_levels)b::bigint[], %(tile_indexes)b::bigint[],
                         %(tile_hashes)b::bytea[])
    WHERE EXISTS (SELECT FROM cas)
    ON CONFLICT (tile_level, tile_index) DO UPDATE SET hashes = excluded.hashes
), bundles AS (
    INSERT INTO ledger_bundles (bundle_index, width, entries)
    SELECT * FROM unnest(%(bundle_indexes)b::bigint[], %(bundle_widths)b::bigint[],
                         %(bundle_entries)b::bytea[])
    WHERE EXISTS (SELECT FROM cas)
    ON CONFLICT (bundle_index) DO UPDATE SET width = excluded.width, entries = excluded.entries
), replaced AS (
    DELETE FROM ledger_bundle_chunks
    WHERE bundle_index = ANY(%(compacted)b::bigint[]) AND EXISTS (SELECT FROM cas)
), chunk AS (
    INSERT INTO ledger_bundle_chunks (bundle_index, first_entry, entry_count, entries)
    SELECT * FROM unnest(%(chunk_indexes)b::bigint[], %(chunk_firsts)b::bigint[],
                         %(chunk_counts)b::bigint[], %(chunk_entries)b::bytea[])
    WHERE EXISTS (SELECT FROM cas)
)
SELECT count(*) FROM cas
"""


class PgAppender:
    """The sequencer's own autocommit PostgreSQL connection, for `append`.

    The store's transactions cost a round trip each for BEGIN, every statement and COMMIT; on a
    busy machine each round trip waits for the server process to be scheduled. This keeps a
    batch to one. Reached only through `open`, which checks the dialect.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    def open(cls, db: Database) -> PgAppender:
        """The database's own kind of connection: on its schema, every wait bounded (a
        partition ends the commit with StoreUnavailable, not a hang)."""
        from bastion.store.postgres import PostgresDatabase

        if not isinstance(db, PostgresDatabase):
            raise StoreUnavailable(f"{db.description} is not a PostgreSQL database")
        return cls(db.connect(autocommit=True))

    def append(self, old: int, new: int, writes: Writes) -> bool:
        """Durably write a batch if the stored size is still `old`; False (nothing written) if
        another writer moved it. Returns once committed (``synchronous_commit`` is left on)."""
        import psycopg

        tiles, bundles, chunks = writes.tiles, writes.bundles, writes.chunks
        params = {
            "old": old,
            "new": new,
            "tile_levels": [t[0] for t in tiles],
            "tile_indexes": [t[1] for t in tiles],
            "tile_hashes": [t[2] for t in tiles],
            "bundle_indexes": [b[0] for b in bundles],
            "bundle_widths": [b[1] for b in bundles],
            "bundle_entries": [b[2] for b in bundles],
            "compacted": list(writes.compacted),
            "chunk_indexes": [c[0] for c in chunks],
            "chunk_firsts": [c[1] for c in chunks],
            "chunk_counts": [c[2] for c in chunks],
            "chunk_entries": [c[3] for c in chunks],
        }
        try:
            row = self._conn.execute(_PG_APPEND, params).fetchone()
        except psycopg.Error as exc:
            if self._conn.closed or self._conn.broken:
                raise StoreUnavailable(
                    f"PostgreSQL connection lost: {type(exc).__name__}"
                ) from None
            raise StoreUnavailable(f"ledger append failed: {type(exc).__name__}") from None
        return row is not None and int(row[0]) == 1

    def close(self) -> None:
        self._conn.close()


# --- the driver -------------------------------------------------------------------------------


# `_PG_APPEND` inside an open transaction (the store's cursor takes ``?`` placeholders): one
# round trip for the compare-and-swap and every write of a commit that also runs side writes.
_PG_APPEND_IN_TRANSACTION = """
WITH cas AS (
    UPDATE ledger_state SET tree_size = ?
    WHERE id = 1 AND tree_size = ?
    RETURNING 1
), tiles AS (
    INSERT INTO ledger_tiles (tile_level, tile_index, hashes)
    SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::bytea[])
    WHERE EXISTS (SELECT FROM cas)
    ON CONFLICT (tile_level, tile_index) DO UPDATE SET hashes = excluded.hashes
), bundles AS (
    INSERT INTO ledger_bundles (bundle_index, width, entries)
    SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::bytea[])
    WHERE EXISTS (SELECT FROM cas)
    ON CONFLICT (bundle_index) DO UPDATE SET width = excluded.width, entries = excluded.entries
), replaced AS (
    DELETE FROM ledger_bundle_chunks
    WHERE bundle_index = ANY(?::bigint[]) AND EXISTS (SELECT FROM cas)
), chunk AS (
    INSERT INTO ledger_bundle_chunks (bundle_index, first_entry, entry_count, entries)
    SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::bigint[], ?::bytea[])
    WHERE EXISTS (SELECT FROM cas)
)
SELECT count(*) FROM cas
"""


def _pg_append_params(old: int, new: int, writes: Writes) -> tuple[object, ...]:
    tiles, bundles, chunks = writes.tiles, writes.bundles, writes.chunks
    return (
        new,
        old,
        [t[0] for t in tiles],
        [t[1] for t in tiles],
        [t[2] for t in tiles],
        [b[0] for b in bundles],
        [b[1] for b in bundles],
        [b[2] for b in bundles],
        list(writes.compacted),
        [c[0] for c in chunks],
        [c[1] for c in chunks],
        [c[2] for c in chunks],
        [c[3] for c in chunks],
    )


class _SqlTransaction:
    """`LogTransaction` over one database transaction that excludes every other writer of
    the log: SQLite's write lock (``BEGIN IMMEDIATE``), or on PostgreSQL the state row's lock
    (``FOR UPDATE``), taken as the transaction's first statement."""

    def __init__(self, cur: Cursor, postgres: bool) -> None:
        self._cur = cur
        self._postgres = postgres
        # Locked and read at once, before anything else of the transaction can run.
        self._size = read_tree_size(cur, for_update=True) if postgres else None

    @property
    def cursor(self) -> Cursor:
        return self._cur

    def tree_size(self) -> int:
        return read_tree_size(self._cur) if self._size is None else self._size

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        data = read_tile(self._cur, level, index)
        return None if data is None or len(data) < width * 32 else data[: width * 32]

    def read_bundle_parts(self, index: int, width: int) -> BundleParts | None:
        parts = read_bundle_parts(self._cur, index)
        return None if parts is None or parts.width != width else parts

    def write(self, old: int, new: int, writes: Writes) -> None:
        if self._postgres:  # one round trip instead of one per table
            row = self._cur.execute(
                _PG_APPEND_IN_TRANSACTION, _pg_append_params(old, new, writes)
            ).fetchone()
            if row is None or int(row[0]) != 1:
                raise IntegrityError(f"tree size moved under the sequencer (expected {old})")
            return
        advance_tree_size(self._cur, old, new)
        _write(self._cur, writes)


def _write(cur: Cursor, writes: Writes) -> None:
    write_tiles(cur, writes.tiles)
    write_batch_bundles(cur, writes.bundles, writes.chunks, writes.compacted)


class SqlLogStorage:
    """`LogStorage` in the tables above, on the shared database (SQLite or PostgreSQL).

    Commits hold the log's lock (SQLite: ``ledger:sequencer``, the file's write lock;
    PostgreSQL: the state row's) and compare-and-swap the state row, so several processes on
    one database cannot fork the log. On PostgreSQL a commit with a cached right
    edge is one autocommitted statement on the driver's own connection (`PgAppender`)."""

    side_writes_in_commit = True

    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.dialect == "postgresql"
        self._appender: PgAppender | None = None
        self._appender_lock = threading.Lock()  # the sequencer thread uses it; close() too

    @property
    def description(self) -> str:
        return self.db.description

    def create(self) -> None:
        create_tables(self.db)

    def append(self, old: int, new: int, writes: Writes) -> bool:
        if self._postgres:
            with self._appender_lock:
                if self._appender is None:
                    self._appender = PgAppender.open(self.db)
                try:
                    return self._appender.append(old, new, writes)
                except BaseException:
                    self._appender.close()  # a fresh connection next time
                    self._appender = None
                    raise
        # SQLite: the compare-and-swap first, one statement fewer than reading the size.
        with self.db.transaction(lock=SEQUENCER_LOCK) as cur:
            if not swap_tree_size(cur, old, new - old):
                return False
            _write(cur, writes)
        return True

    @contextmanager
    def exclusive(self) -> Iterator[_SqlTransaction]:
        if self._postgres:
            # The state row's lock (``FOR UPDATE``, the transaction's first statement, see
            # `_SqlTransaction`) is what excludes the other writers, as the fast path's
            # compare-and-swap takes it too; an advisory lock before it would be one more
            # round trip per commit.
            with self.db.transaction() as cur:
                yield _SqlTransaction(cur, postgres=True)
            return
        with self.db.transaction(lock=SEQUENCER_LOCK) as cur:
            yield _SqlTransaction(cur, postgres=False)

    def tree_size(self) -> int:
        with self.db.transaction() as cur:
            return read_tree_size(cur)

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        with self.db.transaction() as cur:
            data = read_tile(cur, level, index)
        return None if data is None or len(data) < width * 32 else data[: width * 32]

    def read_bundle(self, index: int, width: int) -> bytes | None:
        with self.db.transaction() as cur:
            row = read_bundle(cur, index)
        if row is None or row[0] < width:
            return None
        return row[1] if row[0] == width else bundle_prefix(row[1], width)

    def read_bundles(self, first: int, last: int) -> list[tuple[int, int, bytes]]:
        with self.db.transaction() as cur:
            return read_bundles(cur, first, last)

    def latest_checkpoint(self, *, min_witnesses: int = 0) -> StoredCheckpoint | None:
        with self.db.transaction() as cur:
            return latest_checkpoint(cur, min_witnesses=min_witnesses)

    def store_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        with self.db.transaction(lock=PUBLISHER_LOCK) as cur:
            newest = latest_checkpoint(cur)
            if newest is not None and newest.tree_size >= cp.tree_size:
                return newest  # another process published meanwhile
            insert_checkpoint(cur, cp)
        return cp

    def record_cosignatures(self, size: int, cosignatures: str, witnesses: int) -> None:
        with self.db.transaction(lock=PUBLISHER_LOCK) as cur:
            record_cosignatures(cur, size, cosignatures, witnesses)

    def close(self) -> None:
        with self._appender_lock:
            appender, self._appender = self._appender, None
        if appender is not None:
            appender.close()
