"""The log's read side: what the C2SP tlog-tiles API serves, and proofs from stored tiles.

`LogReader` reads through the `log_storage.LogStorage` seam and caches what never changes (full
tiles and bundles, perfect-subtree hashes). Only what a published checkpoint covers is served,
so every tile a client gets can be checked against a signed root.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from bastion.errors import InputError, IntegrityError, LedgerUnavailable
from bastion.ledger import merkle
from bastion.ledger.log_storage import LogStorage, StoredCheckpoint
from bastion.ledger.tiles import (
    TILE_WIDTH,
    TileNodeReader,
    decode_entry_bundle,
    tile_width_for,
)
from bastion.ledger.tlogproof import build_proof

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


class LogReader:
    """The read side: what the tlog-tiles API serves, and proofs computed from stored tiles.

    Only what a published checkpoint covers is served, so every tile a client gets can be
    checked against a signed root.
    """

    def __init__(self, storage: LogStorage, *, quorum: int = 0) -> None:
        self.storage = storage
        self.quorum = quorum
        self._tiles: _Cache[tuple[int, int], bytes] = _Cache(4096)
        self._bundles: _Cache[int, bytes] = _Cache(256)
        self._nodes: _Cache[tuple[int, int], bytes] = _Cache(1 << 16)

    # --- sizes and checkpoints -----------------------------------------------------------------

    def tree_size(self) -> int:
        """Entries committed (durable), whether or not a checkpoint covers them yet."""
        return self.storage.tree_size()

    def checkpoint(self) -> StoredCheckpoint | None:
        """The newest published checkpoint: signed, and cosigned by the configured quorum."""
        return self.storage.latest_checkpoint(min_witnesses=self.quorum)

    def checkpoint_note(self) -> str:
        cp = self.checkpoint()
        if cp is None:
            raise LedgerUnavailable("the log has not published a checkpoint yet")
        return cp.text

    def published_size(self) -> int:
        cp = self.checkpoint()
        return 0 if cp is None else cp.tree_size

    # --- tiles and bundles ---------------------------------------------------------------------

    def stored_tile(self, level: int, index: int, width: int) -> bytes:
        """`width` hashes of a stored tile (a prefix, if it has grown since)."""
        full = width == TILE_WIDTH
        if full:
            cached = self._tiles.get((level, index))
            if cached is not None:
                return cached
        data = self.storage.read_tile(level, index, width)
        if data is None or len(data) != width * 32:
            raise IntegrityError(f"stored tile {level}/{index} is missing or short")
        if full:
            self._tiles.put((level, index), data)
        return data

    def stored_bundle(self, index: int, width: int) -> bytes:
        """The first `width` entries of a stored bundle, still encoded."""
        full = width == TILE_WIDTH
        data = self._bundles.get(index) if full else None
        if data is not None:
            return data
        data = self.storage.read_bundle(index, width)
        if data is None:
            raise IntegrityError(f"stored entry bundle {index} is missing or short")
        if full:
            self._bundles.put(index, data)
        return data

    def tile(self, level: int, index: int, width: int) -> bytes | None:
        """A tile as tlog-tiles serves it, or None if no published checkpoint covers it."""
        available = tile_width_for(self.published_size(), level, index)
        if width > available:
            return None
        return self.stored_tile(level, index, width)

    def entry_bundle(self, index: int, width: int) -> bytes | None:
        available = tile_width_for(self.published_size(), 0, index)
        if width > available:
            return None
        return self.stored_bundle(index, width)

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(index, entry) for committed entries start..end-1, read a few bundles at a time."""
        size = self.tree_size()
        end = min(end, size)
        if start >= end:
            return
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        for lo in range(first, last + 1, 64):
            rows = self.storage.read_bundles(lo, min(lo + 63, last))
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
        return decode_entry_bundle(self.stored_bundle(bundle, width), width)[position]

    # --- proofs --------------------------------------------------------------------------------

    def node_reader(self, size: int) -> merkle.NodeReader:
        """Perfect-subtree hashes of the stored tree of `size`; they never change, so cache them."""
        tiles = TileNodeReader(size, self.stored_tile)
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
