"""The log's storage seam: what the sequencer, the reader and the publisher need from wherever
the log lives, like Tessera's storage drivers.

A log is what the C2SP tlog-tiles API serves: Merkle tiles, entry bundles and checkpoints, plus
the integrated tree size that the single sequencer compare-and-swaps. A driver stores exactly
that; the sequencer decides what one commit adds (`Writes`) and the driver makes it durable
all at once, or not at all.

Drivers:

- `storage.SqlLogStorage`: tables in the shared `store.Database` (SQLite or PostgreSQL; on
  PostgreSQL a commit with a cached right edge is one autocommitted statement).
- `file_storage.FileLogStorage`: static files in the tlog-tiles layout, so that any web server
  or CDN can serve the log without Bastion.

A *side write* (`api.SideWrite`) is a caller's own database write that must become durable
exactly when its entries do (the gateway's bulk-counter reservation, say). A driver over the
database runs it inside the commit's transaction (`LogTransaction.cursor`); for one that is
not a database, the sequencer commits it first in a transaction of its own (`Sequencer`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from bastion.ledger.api import SideWrite as SideWrite  # re-exported: defined with the API
from bastion.store import Cursor


@dataclass(frozen=True)
class Writes:
    """What one commit adds: grown or completed tiles (level, index, hashes), whole bundles
    (index, width, entries), bundle chunks (index, first entry, count, entries: the stretch
    of a partial bundle this commit adds), and the bundles whose chunks a whole one replaces.

    A bundle chunk that starts at entry 0 is the whole (partial or, at width 256, full) bundle;
    one that starts later continues the partial bundle stored before it."""

    tiles: list[tuple[int, int, bytes]]
    bundles: list[tuple[int, int, bytes]]
    chunks: list[tuple[int, int, int, bytes]]
    compacted: list[int]


@dataclass(frozen=True)
class BundleParts:
    """A stored entry bundle: its width, its encoded entries, and how many chunk rows hold them
    (0 when one whole row does, and always for drivers that store bundles whole)."""

    width: int
    data: bytes
    chunks: int


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


class EdgeSource(Protocol):
    """Reads of the tree's right edge (what `sequencer.RightEdge.load` needs)."""

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        """The first `width` hashes of tile (level, index), or None if it does not hold them."""
        ...

    def read_bundle_parts(self, index: int, width: int) -> BundleParts | None:
        """The first `width` entries of bundle `index` (exactly), or None if it lacks them."""
        ...


class LogTransaction(EdgeSource, Protocol):
    """An exclusive write section: no other writer, in any process, moves the tree until it
    ends. Everything written in it is durable when it ends normally, and none of it otherwise."""

    @property
    def cursor(self) -> Cursor | None:
        """The database transaction side writes run in; None where the log is not a database."""
        ...

    def tree_size(self) -> int: ...

    def write(self, old: int, new: int, writes: Writes) -> None:
        """Move the tree from `old` to `new` entries with `writes`; IntegrityError if the stored
        size is not `old` (nothing is written then)."""
        ...


class LogStorage(Protocol):
    """Where a log lives. Thread-safe."""

    @property
    def description(self) -> str:
        """Where, for messages (no credentials)."""
        ...

    @property
    def side_writes_in_commit(self) -> bool:
        """Whether `LogTransaction.cursor` is a database transaction side writes can run in."""
        ...

    def create(self) -> None:
        """Create what the log needs if it is missing (idempotent)."""
        ...

    # --- the sequencer ---------------------------------------------------------------------

    def append(self, old: int, new: int, writes: Writes) -> bool:
        """Durably write a commit if the stored size is still `old` (compare-and-swap); False,
        with nothing written, if another writer moved it. The fast path: the sequencer's right
        edge is cached, so nothing needs reading first."""
        ...

    def exclusive(self) -> AbstractContextManager[LogTransaction]:
        """Lock out every other writer: to reload the right edge, or to run side writes."""
        ...

    # --- the read side ---------------------------------------------------------------------

    def tree_size(self) -> int:
        """Entries committed (durable), whether or not a checkpoint covers them yet."""
        ...

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        """The first `width` hashes of a stored tile, or None if it does not hold them."""
        ...

    def read_bundle(self, index: int, width: int) -> bytes | None:
        """The first `width` entries of a stored bundle, still encoded, or None."""
        ...

    def read_bundles(self, first: int, last: int) -> list[tuple[int, int, bytes]]:
        """(index, width, data) of the committed bundles first..last inclusive, in order."""
        ...

    # --- checkpoints -----------------------------------------------------------------------

    def latest_checkpoint(self, *, min_witnesses: int = 0) -> StoredCheckpoint | None:
        """The newest stored checkpoint with at least `min_witnesses` cosignatures (0, or the
        quorum the log was configured with)."""
        ...

    def store_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Store a newly signed checkpoint, unless one at least as large is stored already (by
        another process); return whichever is newest."""
        ...

    def record_cosignatures(self, size: int, cosignatures: str, witnesses: int) -> None:
        """Attach the witnesses' cosignature lines to the stored checkpoint of `size`."""
        ...

    def close(self) -> None: ...
