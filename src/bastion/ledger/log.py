"""The transparency log: durable group-committed appends, signed checkpoints, tiles and proofs.

``Log`` is what the rest of Bastion holds: a `LedgerWriter` (append an event, get a receipt once
it is committed) plus the read side (checkpoint, tiles, entry bundles, inclusion and consistency
proofs) that the C2SP tlog-tiles router and the CLI serve. Composition:

- `Sequencer` (sequencer.py): one writer thread, one transaction per batch, CAS on the tree size;
- `Publisher` (publish.py): signs checkpoints shortly after commits and gathers cosignatures;
- `LogReader` (here): reads stored tiles and bundles, computes proofs, caches immutable data.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from bastion.clock import Clock, SystemClock
from bastion.errors import InputError, IntegrityError, KeyUnavailable, LedgerUnavailable
from bastion.events import EntryTooLarge, encode_event
from bastion.home import Home
from bastion.keys.signing import create_signing_key, load_signing_key
from bastion.ledger import merkle, storage
from bastion.ledger.api import Receipt
from bastion.ledger.checkpoint import CheckpointError, open_checkpoint
from bastion.ledger.note import NoteError, NoteSigner
from bastion.ledger.publish import Publisher, WitnessEndpoint
from bastion.ledger.sequencer import Sequencer
from bastion.ledger.storage import StoredCheckpoint
from bastion.ledger.tiles import (
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    TileNodeReader,
    decode_entry_bundle,
    level_width,
    tile_hashes,
    tile_root,
    tile_width_for,
)
from bastion.ledger.tlogproof import build_proof
from bastion.store import Database

_log = logging.getLogger(__name__)

LOG_KEY_NAME = "log"
MAX_ENTRY_BYTES = MAX_ENTRY_SIZE
"""65,535 bytes: the most a tlog-tiles entry bundle (uint16 length prefix) can carry."""

K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """A small thread-safe LRU for immutable bytes (full tiles and bundles, subtree hashes),
    bounded in entries and in bytes (a bundle of 64 KiB entries is 16 MiB)."""

    def __init__(self, capacity: int, max_bytes: int = 64 << 20) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        size = len(value) if isinstance(value, bytes) else 0
        if size > self._max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if isinstance(old, bytes):
                self._bytes -= len(old)
            self._data[key] = value
            self._bytes += size
            while len(self._data) > self._capacity or self._bytes > self._max_bytes:
                _, evicted = self._data.popitem(last=False)
                if isinstance(evicted, bytes):
                    self._bytes -= len(evicted)


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


class LogReader:
    """The read side: what the tlog-tiles API serves, and proofs computed from stored tiles.

    Only what a published checkpoint covers is served, so every tile a client gets can be
    checked against a signed root.
    """

    def __init__(self, db: Database, *, quorum: int = 0) -> None:
        self.db = db
        self.quorum = quorum
        self._tiles: _Cache[tuple[int, int], bytes] = _Cache(4096)
        self._bundles: _Cache[int, bytes] = _Cache(256)
        self._nodes: _Cache[tuple[int, int], bytes] = _Cache(1 << 16)

    # --- sizes and checkpoints -----------------------------------------------------------------

    def tree_size(self) -> int:
        """Entries committed (durable), whether or not a checkpoint covers them yet."""
        with self.db.transaction() as cur:
            return storage.read_tree_size(cur)

    def checkpoint(self) -> StoredCheckpoint | None:
        """The newest published checkpoint: signed, and cosigned by the configured quorum."""
        with self.db.transaction() as cur:
            return storage.latest_checkpoint(cur, min_witnesses=self.quorum)

    def checkpoint_note(self) -> str:
        cp = self.checkpoint()
        if cp is None:
            raise LedgerUnavailable("the log has not published a checkpoint yet")
        return cp.text

    def published_size(self) -> int:
        cp = self.checkpoint()
        return 0 if cp is None else cp.tree_size

    # --- tiles and bundles ---------------------------------------------------------------------

    def _stored_tile(self, level: int, index: int, width: int) -> bytes:
        """`width` hashes of a stored tile (a prefix, if it has grown since)."""
        if width == TILE_WIDTH:
            cached = self._tiles.get((level, index))
            if cached is not None:
                return cached
        with self.db.transaction() as cur:
            data = storage.read_tile(cur, level, index)
        if data is None or len(data) < width * 32:
            raise IntegrityError(f"stored tile {level}/{index} is missing or short")
        if len(data) == TILE_WIDTH * 32:
            self._tiles.put((level, index), data)
        return data[: width * 32]

    def _stored_bundle(self, index: int, width: int) -> bytes:
        """The first `width` entries of a stored bundle, still encoded."""
        data = self._bundles.get(index) if width == TILE_WIDTH else None
        if data is not None:
            return data
        with self.db.transaction() as cur:
            row = storage.read_bundle(cur, index)
        if row is None or row[0] < width:
            raise IntegrityError(f"stored entry bundle {index} is missing or short")
        stored_width, data = row
        if stored_width == TILE_WIDTH:
            self._bundles.put(index, data)
        if stored_width == width:
            return data
        return _bundle_prefix(data, width)

    def tile(self, level: int, index: int, width: int) -> bytes | None:
        """A tile as tlog-tiles serves it, or None if no published checkpoint covers it."""
        available = tile_width_for(self.published_size(), level, index)
        if width > available:
            return None
        return self._stored_tile(level, index, width)

    def entry_bundle(self, index: int, width: int) -> bytes | None:
        available = tile_width_for(self.published_size(), 0, index)
        if width > available:
            return None
        return self._stored_bundle(index, width)

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(index, entry) for committed entries start..end-1, read a few bundles at a time."""
        size = self.tree_size()
        end = min(end, size)
        if start >= end:
            return
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        for lo in range(first, last + 1, 64):
            with self.db.transaction() as cur:
                rows = storage.read_bundles(cur, lo, min(lo + 63, last))
            for bundle_index, width, data in rows:
                base = bundle_index * TILE_WIDTH
                for offset, entry in enumerate(decode_entry_bundle(data, width)):
                    if start <= base + offset < end:
                        yield base + offset, entry

    def entry(self, index: int) -> bytes:
        """One committed entry."""
        size = self.tree_size()
        if not 0 <= index < size:
            raise InputError(f"index {index} is outside the log (size {size})")
        bundle, position = divmod(index, TILE_WIDTH)
        width = tile_width_for(size, 0, bundle)
        return decode_entry_bundle(self._stored_bundle(bundle, width), width)[position]

    # --- proofs --------------------------------------------------------------------------------

    def node_reader(self, size: int) -> merkle.NodeReader:
        """Perfect-subtree hashes of the stored tree of `size`; they never change, so cache them."""
        tiles = TileNodeReader(size, self._stored_tile)
        nodes = self._nodes

        def node(level: int, index: int) -> bytes:
            key = (level, index)
            value = nodes.get(key)
            if value is None:
                value = tiles(level, index)
                nodes.put(key, value)
            return value

        return node

    def _check_size(self, size: int) -> None:
        current = self.tree_size()
        if not 0 <= size <= current:
            raise InputError(f"tree size {size} is outside the log (size {current})")

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return merkle.root(size, self.node_reader(size))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        if not 0 <= index < size:
            raise InputError(f"index {index} is not in the tree of size {size}")
        return merkle.inclusion_proof(index, size, self.node_reader(size))

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        if not 0 < old <= new:
            raise InputError(f"no consistency proof from size {old} to size {new}")
        return merkle.consistency_proof(old, new, self.node_reader(new))

    def proof(self, index: int) -> tuple[StoredCheckpoint, bytes, list[bytes]]:
        """(published checkpoint, entry, inclusion proof) for `index`."""
        cp = self.checkpoint()
        if cp is None or index >= cp.tree_size:
            size = 0 if cp is None else cp.tree_size
            raise LedgerUnavailable(
                f"index {index} is not yet covered by a published checkpoint (size {size})"
            )
        if index < 0:
            raise InputError(f"index {index} is negative")
        return cp, self.entry(index), self.inclusion_proof(index, cp.tree_size)

    def proof_bundle(self, index: int) -> str:
        """An offline C2SP tlog-proof for `index` against the published checkpoint."""
        cp, entry, proof = self.proof(index)
        return build_proof(entry, index, proof, cp.text)


def _bundle_prefix(data: bytes, width: int) -> bytes:
    pos = 0
    for _ in range(width):
        if pos + 2 > len(data):
            raise IntegrityError("stored entry bundle is truncated")
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    if pos > len(data):
        raise IntegrityError("stored entry bundle is truncated")
    return data[:pos]


class Log:
    """A `LedgerWriter` over a `Database`, with the read side and checkpoint publishing."""

    def __init__(
        self,
        db: Database,
        signer: NoteSigner,
        clock: Clock,
        *,
        witnesses: Sequence[WitnessEndpoint] = (),
        quorum: int = 0,
        publish_interval: float = 0.5,
        background: bool = True,
    ) -> None:
        self.db = db
        self.signer = signer
        self.clock = clock
        self.quorum = quorum
        self.witnesses = tuple(witnesses)
        self.reader = LogReader(db, quorum=quorum)
        self.publisher = Publisher(
            db,
            signer,
            clock,
            node_reader=self.reader.node_reader,
            witnesses=witnesses,
            interval=publish_interval,
        )
        self.sequencer = Sequencer(db, on_commit=self.publisher.notify if background else None)
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

    def append_entries(self, entries: Sequence[bytes]) -> list[Receipt]:
        return self.sequencer.submit([check_entry(e) for e in entries])

    async def append_async(self, event: BaseModel) -> Receipt:
        """`append` for asyncio callers: waits for the commit without holding a thread."""
        return await self.sequencer.submit_one_async(encode_entry(event))

    async def append_entry_async(self, entry: bytes) -> Receipt:
        return await self.sequencer.submit_one_async(check_entry(entry))

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

    def router(self) -> Any:
        """The FastAPI router serving C2SP tlog-tiles under /log/."""
        from bastion.ledger.http import log_router

        return log_router(self.reader)

    # --- integrity -----------------------------------------------------------------------------

    def check_head(self) -> StoredCheckpoint | None:
        """Cheap start-up check: the newest stored checkpoint is signed by this log's key and
        the stored tiles still reproduce its root."""
        with self.db.transaction() as cur:
            latest = storage.latest_checkpoint(cur)
            size = storage.read_tree_size(cur)
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
        tiles = TileNodeReader(size, self.reader._stored_tile)
        if merkle.root(cp.size, tiles) != cp.root_hash:
            raise IntegrityError(f"stored tiles do not reproduce the signed root of size {cp.size}")
        return latest

    def verify_storage(self) -> StorageReport:
        """Recompute everything from the stored entries: each bundle against its level-0 tile,
        each tile level against the one below, and the root of the newest checkpoint."""
        with self.db.transaction() as cur:
            size = storage.read_tree_size(cur)
            latest = storage.latest_checkpoint(cur)
        entries_checked = tiles_checked = 0
        roots: list[bytes] = []  # roots of the full tiles of the level being checked
        n_bundles = -(-size // TILE_WIDTH)
        step = 64
        for first in range(0, n_bundles, step):
            last = min(first + step, n_bundles) - 1
            with self.db.transaction() as cur:
                rows = storage.read_bundles(cur, first, last)
            if [r[0] for r in rows] != list(range(first, last + 1)):
                raise IntegrityError(f"entry bundles {first}..{last} are not all stored")
            for index, width, data in rows:
                expected_width = tile_width_for(size, 0, index)
                if width != expected_width:
                    raise IntegrityError(f"entry bundle {index} has width {width}")
                leaves = [merkle.leaf_hash(e) for e in decode_entry_bundle(data, width)]
                if b"".join(leaves) != self.reader._stored_tile(0, index, width):
                    raise IntegrityError(f"entry bundle {index} does not hash to its tile")
                entries_checked += width
                tiles_checked += 1
                if width == TILE_WIDTH:
                    roots.append(tile_root(leaves))
        level = 1
        while level_width(size, level) > 0:
            nodes = level_width(size, level)  # = full tiles on the level below
            if len(roots) != nodes:
                raise IntegrityError(f"tile level {level - 1} has {len(roots)} full tiles")
            next_roots: list[bytes] = []
            for index in range(-(-nodes // TILE_WIDTH)):
                width = tile_width_for(size, level, index)
                data = self.reader._stored_tile(level, index, width)
                if data != b"".join(roots[index * TILE_WIDTH : index * TILE_WIDTH + width]):
                    raise IntegrityError(f"tile {level}/{index} does not match the level below")
                tiles_checked += 1
                if width == TILE_WIDTH:
                    next_roots.append(tile_root(tile_hashes(data, width)))
            roots = next_roots
            level += 1
        root_hash = merkle.root(size, TileNodeReader(size, self.reader._stored_tile))
        if latest is not None:
            at = merkle.root(latest.tree_size, TileNodeReader(size, self.reader._stored_tile))
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


# --- composition ------------------------------------------------------------------------------


def _load_log_key(db: Database, keys_dir: Path) -> Ed25519PrivateKey:
    """The log's signing key; created only for a log that has never signed anything."""
    try:
        return load_signing_key(keys_dir, LOG_KEY_NAME)
    except KeyUnavailable:
        if (keys_dir / f"{LOG_KEY_NAME}.ed25519.pem").exists():
            raise
    with db.transaction() as cur:
        signed = storage.latest_checkpoint(cur)
    if signed is not None:
        raise KeyUnavailable(
            f"the log's signing key is missing from {keys_dir}, but the database holds"
            f" checkpoints up to size {signed.tree_size}: restore the key; a new one would fork"
            " the log's identity"
        )
    keys_dir.mkdir(parents=True, exist_ok=True)
    return create_signing_key(keys_dir, LOG_KEY_NAME)


def initialize_log(
    db: Database, keys_dir: Path, origin: str, clock: Clock | None = None
) -> dict[str, Any]:
    """Create the ledger's tables and signing key and publish the first (empty) checkpoint."""
    storage.create_tables(db)
    signer = NoteSigner(origin, _load_log_key(db, keys_dir))
    log = Log(db, signer, clock or SystemClock(), background=False)
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
    """The home's log: tables ensured, key loaded, head checked, publisher running."""
    storage.create_tables(db)
    signer = NoteSigner(home.settings.log_origin, _load_log_key(db, home.keyring_dir))
    witnesses = [WitnessEndpoint.parse(w) for w in home.settings.witnesses]
    log = Log(
        db,
        signer,
        clock,
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
