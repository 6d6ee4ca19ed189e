"""The transparency log: durable group-committed appends, signed checkpoints, tiles and proofs.

``Log`` is what the rest of Bastion holds: a `LedgerWriter` (append an event, get a receipt once
it is committed) plus the read side (checkpoint, tiles, entry bundles, inclusion and consistency
proofs) that the C2SP tlog-tiles router and the CLI serve. Composition:

- `Sequencer` (sequencer.py): one writer thread, one transaction per batch, CAS on the tree size;
- `Publisher` (publish.py): signs checkpoints shortly after commits and gathers cosignatures;
- `LogReader` (reader.py): reads stored tiles and bundles, computes proofs, caches immutable data;
- a `LogStorage` driver (log_storage.py) under all three: the database's tables
  (`storage.SqlLogStorage`, the default) or static tlog-tiles files (`file_storage`), chosen by
  ``[ledger] storage`` in the home's config (`storage_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from bastion.clock import Clock, SystemClock
from bastion.errors import InputError, IntegrityError, KeyUnavailable
from bastion.events import EntryTooLarge, encode_event
from bastion.home import Bounds, Home
from bastion.keys.signing import create_signing_key, load_signing_key
from bastion.ledger import merkle
from bastion.ledger.api import Receipt, SideWrite
from bastion.ledger.checkpoint import CheckpointError, open_checkpoint
from bastion.ledger.file_storage import FileLogStorage
from bastion.ledger.log_storage import LogStorage, StoredCheckpoint
from bastion.ledger.note import NoteError, NoteSigner
from bastion.ledger.publish import Publisher, WitnessEndpoint
from bastion.ledger.reader import LogReader
from bastion.ledger.sequencer import Sequencer
from bastion.ledger.storage import SqlLogStorage
from bastion.ledger.tiles import (
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    TileError,
    TileNodeReader,
    bundle_leaf_hashes,
    full_tile_root,
    level_width,
    tile_width_for,
)
from bastion.store import Database

_log = logging.getLogger(__name__)

LOG_KEY_NAME = "log"
MAX_ENTRY_BYTES = MAX_ENTRY_SIZE
"""65,535 bytes: the most a tlog-tiles entry bundle (uint16 length prefix) can carry."""

_BYTES = (bytes, bytearray, memoryview)


def check_entry(entry: bytes) -> bytes:
    """Refuse what the log cannot carry, with a clear reason. Entries are opaque bytes."""
    if not isinstance(entry, _BYTES):
        raise InputError(f"a log entry must be bytes, not {type(entry).__name__}")
    if len(entry) > MAX_ENTRY_BYTES:
        raise InputError(
            f"entry is {len(entry)} bytes; the ledger accepts at most {MAX_ENTRY_BYTES} bytes"
            " (64 KiB less one: the tlog-tiles entry bundle's 16-bit length)"
        )
    return bytes(entry)


def encode_entry(event: BaseModel) -> bytes:
    """An event's ledger entry (RFC 8785 canonical JSON), size-checked."""
    try:
        data = encode_event(event)  # type: ignore[arg-type]
    except EntryTooLarge as exc:
        raise InputError(f"event {getattr(event, 'type', '?')!r}: {exc}") from None
    return check_entry(data)


@dataclass(frozen=True)
class StorageReport:
    """What `Log.verify_storage` checked."""

    tree_size: int
    root_hash: bytes
    checkpoint_size: int
    entries_checked: int
    tiles_checked: int

    def to_json(self) -> dict[str, object]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "checkpoint_size": self.checkpoint_size,
            "entries_checked": self.entries_checked,
            "tiles_checked": self.tiles_checked,
        }


class Log:
    """A `LedgerWriter` over a `LogStorage` (by default the tables of `db`), with the read side
    and checkpoint publishing. `db` is also where side writes run when the storage is not the
    database; it may be None for a log that takes none."""

    def __init__(
        self,
        db: Database | None,
        signer: NoteSigner,
        clock: Clock,
        *,
        storage: LogStorage | None = None,
        witnesses: Sequence[WitnessEndpoint] = (),
        quorum: int = 0,
        publish_interval: float = 0.5,
        background: bool = True,
    ) -> None:
        if storage is None:
            if db is None:
                raise ValueError("a log needs a database or a storage driver")
            storage = SqlLogStorage(db)
        self.db = db
        self.storage = storage
        self.signer = signer
        self.clock = clock
        self.quorum = quorum
        self.witnesses = tuple(witnesses)
        self.reader = LogReader(storage, quorum=quorum)
        self.publisher = Publisher(
            storage,
            signer,
            clock,
            node_reader=self.reader.node_reader,
            witnesses=witnesses,
            interval=publish_interval,
        )
        self.sequencer = Sequencer(
            storage,
            side_db=db,
            on_commit=self.publisher.notify if background else None,
            commit_timeout=(db.bounds if db is not None else Bounds()).commit_wait_s,
        )
        self._background = background
        if background:
            self.publisher.start()

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def vkey(self) -> str:
        """The log's C2SP verifier key."""
        return self.signer.vkey

    # --- LedgerWriter --------------------------------------------------------------------------

    def append(self, event: BaseModel) -> Receipt:
        """Durably record one event; returns its index and leaf hash once committed."""
        return self.sequencer.submit_one(encode_entry(event))

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        """Durably record events in one commit, at consecutive indexes, in order."""
        entries = [encode_entry(e) for e in events]  # all checked before any is enqueued
        return self.sequencer.submit(entries)

    def append_entry(self, entry: bytes) -> Receipt:
        return self.sequencer.submit_one(check_entry(entry))

    def append_entries(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        """Durably record entries in one commit, in order; `side_write` (see
        `sequencer.Sequencer`) becomes durable with them, or the call fails with its error."""
        return self.sequencer.submit([check_entry(e) for e in entries], side_write=side_write)

    async def append_async(self, event: BaseModel) -> Receipt:
        """`append` for asyncio callers: waits for the commit without holding a thread."""
        return await self.sequencer.submit_one_async(encode_entry(event))

    async def append_entry_async(self, entry: bytes) -> Receipt:
        return await self.sequencer.submit_one_async(check_entry(entry))

    async def append_entries_async(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        """`append_entries` for asyncio callers."""
        checked = [check_entry(e) for e in entries]
        return await self.sequencer.submit_async(checked, side_write=side_write)

    # --- reads (delegated) ---------------------------------------------------------------------

    def size(self) -> int:
        return self.reader.tree_size()

    def checkpoint(self) -> StoredCheckpoint | None:
        return self.reader.checkpoint()

    def checkpoint_note(self) -> str:
        return self.reader.checkpoint_note()

    def entry(self, index: int) -> bytes:
        return self.reader.entry(index)

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return self.reader.entries(start, end)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.reader.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.reader.consistency_proof(old, new)

    def proof_bundle(self, index: int) -> str:
        return self.reader.proof_bundle(index)

    def publish(self) -> StoredCheckpoint:
        """Sign a checkpoint for everything committed so far (and ask the witnesses) now."""
        return self.publisher.publish()

    # --- integrity -----------------------------------------------------------------------------

    def check_head(self) -> StoredCheckpoint | None:
        """Cheap start-up check: the newest stored checkpoint is signed by this log's key and
        the stored tiles still reproduce its root."""
        latest = self.storage.latest_checkpoint()
        size = self.storage.tree_size()
        if latest is None:
            return None
        try:
            cp = open_checkpoint(latest.note, self.signer.verifier())
        except (NoteError, CheckpointError) as exc:
            raise KeyUnavailable(
                f"the stored checkpoints were not signed by this log's key ({exc});"
                " refusing to continue under a different identity"
            ) from None
        if cp.size != latest.tree_size or cp.root_hash != latest.root_hash:
            raise IntegrityError("stored checkpoint row does not match its signed note")
        if size < cp.size:
            raise IntegrityError(
                f"stored tree size {size} is below the signed checkpoint size {cp.size}"
            )
        tiles = TileNodeReader(size, self.reader.stored_tile)
        if merkle.root(cp.size, tiles) != cp.root_hash:
            raise IntegrityError(f"stored tiles do not reproduce the signed root of size {cp.size}")
        return latest

    def verify_storage(self) -> StorageReport:
        """Recompute everything from the stored entries: each bundle against its level-0 tile,
        each tile level against the one below, and the root of the newest checkpoint."""
        size = self.storage.tree_size()
        latest = self.storage.latest_checkpoint()
        entries_checked = tiles_checked = 0
        roots: list[bytes] = []  # roots of the full tiles of the level being checked
        n_bundles = -(-size // TILE_WIDTH)
        step = 64
        stored_tile = self.reader.stored_tile
        for first in range(0, n_bundles, step):
            last = min(first + step, n_bundles) - 1
            rows = self.storage.read_bundles(first, last)
            if [r[0] for r in rows] != list(range(first, last + 1)):
                raise IntegrityError(f"entry bundles {first}..{last} are not all stored")
            for index, width, data in rows:
                expected_width = tile_width_for(size, 0, index)
                if width != expected_width:
                    raise IntegrityError(f"entry bundle {index} has width {width}")
                try:
                    leaves = bundle_leaf_hashes(data, width)
                except TileError as exc:
                    raise IntegrityError(f"entry bundle {index}: {exc}") from None
                if leaves != stored_tile(0, index, width):
                    raise IntegrityError(f"entry bundle {index} does not hash to its tile")
                entries_checked += width
                tiles_checked += 1
                if width == TILE_WIDTH:
                    roots.append(full_tile_root(leaves))
        level = 1
        while level_width(size, level) > 0:
            nodes = level_width(size, level)  # = full tiles on the level below
            if len(roots) != nodes:
                raise IntegrityError(f"tile level {level - 1} has {len(roots)} full tiles")
            next_roots: list[bytes] = []
            for index in range(-(-nodes // TILE_WIDTH)):
                width = tile_width_for(size, level, index)
                data = stored_tile(level, index, width)
                if data != b"".join(roots[index * TILE_WIDTH : index * TILE_WIDTH + width]):
                    raise IntegrityError(f"tile {level}/{index} does not match the level below")
                tiles_checked += 1
                if width == TILE_WIDTH:
                    next_roots.append(full_tile_root(data))
            roots = next_roots
            level += 1
        root_hash = merkle.root(size, TileNodeReader(size, stored_tile))
        if latest is not None:
            at = merkle.root(latest.tree_size, TileNodeReader(size, stored_tile))
            if at != latest.root_hash:
                raise IntegrityError(
                    f"stored entries do not reproduce the signed root of size {latest.tree_size}"
                )
        return StorageReport(
            size,
            root_hash,
            0 if latest is None else latest.tree_size,
            entries_checked,
            tiles_checked,
        )

    def close(self) -> None:
        """Commit what is queued, publish it (best effort), stop the background threads."""
        self.sequencer.close()
        if self._background:
            try:
                self.publisher.publish()
            except Exception as exc:  # closing must not fail; the next start publishes
                _log.warning("final checkpoint not published: %s", type(exc).__name__)
        self.publisher.close()
        self.storage.close()


# --- composition ------------------------------------------------------------------------------


def storage_for(home: Home, db: Database) -> LogStorage:
    """The home's log storage: ``[ledger] storage`` is ``"database"`` (the default: `db`'s
    tables) or ``"files"`` (static tlog-tiles files in ``[ledger] directory``, by default
    ``<home>/log``; a relative path is from the home)."""
    ledger = home.settings.ledger
    if ledger.storage == "database":
        return SqlLogStorage(db)
    directory = home.tiles_dir if ledger.directory is None else Path(ledger.directory)
    return FileLogStorage(home.path / directory.expanduser(), quorum=ledger.witness_quorum)


def _load_log_key(storage: LogStorage, keys_dir: Path) -> Ed25519PrivateKey:
    """The log's signing key; created only for a log that has never signed anything."""
    try:
        return load_signing_key(keys_dir, LOG_KEY_NAME)
    except KeyUnavailable:
        if (keys_dir / f"{LOG_KEY_NAME}.ed25519.pem").exists():
            raise
    signed = storage.latest_checkpoint()
    if signed is not None:
        raise KeyUnavailable(
            f"the log's signing key is missing from {keys_dir}, but {storage.description} holds"
            f" checkpoints up to size {signed.tree_size}: restore the key; a new one would fork"
            " the log's identity"
        )
    keys_dir.mkdir(parents=True, exist_ok=True)
    return create_signing_key(keys_dir, LOG_KEY_NAME)


def initialize_log(
    db: Database,
    keys_dir: Path,
    origin: str,
    clock: Clock | None = None,
    *,
    storage: LogStorage | None = None,
) -> dict[str, Any]:
    """Create the ledger's storage and signing key and publish the first (empty) checkpoint."""
    storage = storage or SqlLogStorage(db)
    storage.create()
    signer = NoteSigner(origin, _load_log_key(storage, keys_dir))
    log = Log(db, signer, clock or SystemClock(), storage=storage, background=False)
    try:
        log.check_head()
        cp = log.publish()
    finally:
        log.close()
    return {"log_origin": origin, "log_vkey": signer.vkey, "log_size": cp.tree_size}


def open_log(
    home: Home,
    db: Database,
    clock: Clock,
    *,
    background: bool = True,
    publish_interval: float = 0.5,
) -> Log:
    """The home's log: storage ensured, key loaded, head checked, publisher running."""
    storage = storage_for(home, db)
    storage.create()
    signer = NoteSigner(home.settings.log_origin, _load_log_key(storage, home.keyring_dir))
    witnesses = [WitnessEndpoint.parse(w) for w in home.settings.witnesses]
    log = Log(
        db,
        signer,
        clock,
        storage=storage,
        witnesses=witnesses,
        quorum=home.settings.witness_quorum,
        publish_interval=publish_interval,
        background=background,
    )
    try:
        log.check_head()
    except BaseException:
        log.close()
        raise
    return log
