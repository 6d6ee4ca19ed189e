"""The log's tables and the SQL that reads and writes them, on SQLite and PostgreSQL alike.

Storage follows Tessera's layout rather than one row per entry: the log keeps exactly what the
C2SP tlog-tiles API serves. A group commit therefore writes a handful of rows however many
entries it carries:

- ``ledger_state``: one row, the integrated tree size. The sequencer's compare-and-swap target.
- ``ledger_tiles``: Merkle tiles of height 8 (hashes concatenated). The rightmost tile of each
  level is rewritten as it grows; full tiles never change.
- ``ledger_bundles``: full entry bundles (256 uint16-length-prefixed entries), written once.
- ``ledger_bundle_chunks``: the entries of the rightmost, partial bundle, one row per commit, so a
  small commit writes only its own entries (not the whole partial bundle again). When the bundle
  fills, it is written whole and its chunks are deleted in the same transaction.
- ``ledger_checkpoints``: every signed checkpoint, with the witness cosignatures it gathered.

Every function takes an open cursor so callers decide the transaction boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bastion.errors import IntegrityError
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


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as the log signed it, plus the cosignature lines witnesses returned."""

    tree_size: int
    root_hash: bytes
    note: str
    cosignatures: str
    witnesses: int
    created_at: str

    @property
    def text(self) -> str:
        """The published note: the log's signed note with the witnesses' lines appended."""
        return self.note + self.cosignatures


# --- tree size -----------------------------------------------------------------------------


def read_tree_size(cur: Cursor) -> int:
    row = cur.execute("SELECT tree_size FROM ledger_state WHERE id = 1").fetchone()
    if row is None:
        raise IntegrityError("the ledger's state row is missing; was the log initialized?")
    return int(row[0])


def advance_tree_size(cur: Cursor, old: int, new: int) -> None:
    """Compare-and-swap the tree size: fails loudly if another writer moved it meanwhile."""
    cur.execute("UPDATE ledger_state SET tree_size = ? WHERE id = 1 AND tree_size = ?", (new, old))
    if cur.rowcount != 1:
        raise IntegrityError(f"tree size moved under the sequencer (expected {old})")


# --- tiles and bundles ---------------------------------------------------------------------


def read_tile(cur: Cursor, level: int, index: int) -> bytes | None:
    row = cur.execute(
        "SELECT hashes FROM ledger_tiles WHERE tile_level = ? AND tile_index = ?", (level, index)
    ).fetchone()
    return None if row is None else bytes(row[0])


def read_bundle(cur: Cursor, index: int) -> tuple[int, bytes] | None:
    """(width, encoded entries) of a bundle: a full one, or the partial one from its chunks."""
    row = cur.execute(
        "SELECT width, entries FROM ledger_bundles WHERE bundle_index = ?", (index,)
    ).fetchone()
    if row is not None:
        return int(row[0]), bytes(row[1])
    chunks = cur.execute(
        "SELECT first_entry, entry_count, entries FROM ledger_bundle_chunks"
        " WHERE bundle_index = ? ORDER BY first_entry",
        (index,),
    ).fetchall()
    if not chunks:
        return None
    width, parts = 0, []
    for first, count, data in chunks:
        if int(first) != width:
            raise IntegrityError(f"entry bundle {index} has a gap at entry {width}")
        width += int(count)
        parts.append(bytes(data))
    return width, b"".join(parts)


def read_full_bundles(cur: Cursor, first: int, last: int) -> list[tuple[int, int, bytes]]:
    """(index, width, data) of the full bundles first..last inclusive, in order."""
    rows = cur.execute(
        "SELECT bundle_index, width, entries FROM ledger_bundles"
        " WHERE bundle_index >= ? AND bundle_index <= ? ORDER BY bundle_index",
        (first, last),
    ).fetchall()
    return [(int(i), int(w), bytes(d)) for i, w, d in rows]


def read_bundles(cur: Cursor, first: int, last: int) -> list[tuple[int, int, bytes]]:
    """(index, width, data) of every stored bundle first..last inclusive, partial one included."""
    rows = read_full_bundles(cur, first, last)
    full = {r[0] for r in rows}
    partial = cur.execute(
        "SELECT DISTINCT bundle_index FROM ledger_bundle_chunks"
        " WHERE bundle_index >= ? AND bundle_index <= ?",
        (first, last),
    ).fetchall()
    for (index,) in partial:
        if int(index) not in full:
            bundle = read_bundle(cur, int(index))
            if bundle is not None:
                rows.append((int(index), *bundle))
    rows.sort()
    return rows


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


def write_bundle_chunk(cur: Cursor, index: int, first: int, count: int, data: bytes) -> None:
    """Append `count` encoded entries to partial bundle `index`, starting at entry `first`."""
    cur.execute(
        "INSERT INTO ledger_bundle_chunks (bundle_index, first_entry, entry_count, entries)"
        " VALUES (?, ?, ?, ?)",
        (index, first, count, data),
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


def checkpoint_at(cur: Cursor, size: int) -> StoredCheckpoint | None:
    row = cur.execute(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM ledger_checkpoints WHERE tree_size = ?", (size,)
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
