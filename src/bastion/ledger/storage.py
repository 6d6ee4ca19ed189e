"""The log's tables and the SQL that reads and writes them, on SQLite and PostgreSQL alike.

Storage follows Tessera's layout rather than one row per entry: the log keeps exactly what the
C2SP tlog-tiles API serves. A group commit therefore writes a handful of rows however many
entries it carries:

- ``ledger_state``: one row, the integrated tree size. The sequencer's compare-and-swap target.
- ``ledger_tiles``: Merkle tiles of height 8 (hashes concatenated). The rightmost tile of each
  level is rewritten as it grows; full tiles never change.
- ``ledger_bundles``: entry bundles (uint16-length-prefixed entries), the same way.
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
    row = cur.execute(
        "SELECT width, entries FROM ledger_bundles WHERE bundle_index = ?", (index,)
    ).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def read_bundles(cur: Cursor, first: int, last: int) -> list[tuple[int, int, bytes]]:
    """(index, width, data) of bundles first..last inclusive, in order."""
    rows = cur.execute(
        "SELECT bundle_index, width, entries FROM ledger_bundles"
        " WHERE bundle_index >= ? AND bundle_index <= ? ORDER BY bundle_index",
        (first, last),
    ).fetchall()
    return [(int(i), int(w), bytes(d)) for i, w, d in rows]


def write_tiles(cur: Cursor, tiles: Sequence[tuple[int, int, bytes]]) -> None:
    """Upsert (level, index, hashes) rows: a partial tile is replaced by its grown self."""
    if tiles:
        cur.executemany(
            "INSERT INTO ledger_tiles (tile_level, tile_index, hashes) VALUES (?, ?, ?)"
            " ON CONFLICT (tile_level, tile_index) DO UPDATE SET hashes = excluded.hashes",
            tiles,
        )


def write_bundles(cur: Cursor, bundles: Sequence[tuple[int, int, bytes]]) -> None:
    """Upsert (index, width, entries) rows."""
    if bundles:
        cur.executemany(
            "INSERT INTO ledger_bundles (bundle_index, width, entries) VALUES (?, ?, ?)"
            " ON CONFLICT (bundle_index) DO UPDATE"
            " SET width = excluded.width, entries = excluded.entries",
            bundles,
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
