"""Group commit: many appenders, one sequencer, one transaction per batch.

Appenders hash their entry, enqueue it and block. One sequencer thread per process drains the
queue a batch at a time and, in ONE transaction holding the ``ledger:sequencer`` lock (a
PostgreSQL advisory lock, or SQLite's single writer), reads the tree size, appends the batch to
the stored tiles and entry bundles, and compare-and-swaps the tree size. Only after the commit
returns does it wake the batch's appenders with their indexes, so a receipt always means
"durable". While one batch commits, the next one fills up: that is what makes throughput grow
with the number of appenders.

Several processes (each with its own sequencer) may share one database: the lock serializes
their transactions, and each re-reads the tree size inside it, so the log cannot fork. Each
sequencer caches the right edge of the tree (the partial tiles and bundle) and reloads it from
the database whenever the stored size is not the one it last wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bastion.errors import BastionError, IntegrityError, LedgerUnavailable
from bastion.ledger import storage
from bastion.ledger.api import Receipt
from bastion.ledger.merkle import leaf_hash
from bastion.ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    encode_entry_bundle,
    level_width,
    tile_hashes,
    tile_levels,
    tile_root,
)
from bastion.store import Cursor, Database

log = logging.getLogger(__name__)

_sha256 = hashlib.sha256
_allocate_lock = threading.Lock

_TILE_BYTES = TILE_WIDTH * 32

CommitListener = Callable[[int], None]
"""Called after each commit with the new tree size."""


@dataclass
class _Batch:
    """Entries that will share one transaction, and how to wake whoever waits on them."""

    entries: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    wakers: list[Callable[[], object]] = field(default_factory=list)
    # Async appenders: one thread-safe callback per event loop wakes all of that loop's futures.
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = field(
        default_factory=dict
    )
    timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = field(default_factory=dict)
    nbytes: int = 0
    first: int = -1
    error: BaseException | None = None


@dataclass
class RightEdge:
    """What appending needs from the tree: the contents of its partial tiles and bundle.

    Tessera-style: leaf hashes fill the level-0 tile; when a tile fills, its root (the hash of
    its 256-leaf subtree) is appended to the tile above. Nothing else of the tree is kept.
    """

    size: int
    # level -> hashes in the rightmost tile of that level (empty when the level's last tile is full)
    tails: dict[int, bytearray]
    bundle: bytearray
    bundle_width: int

    @classmethod
    def load(cls, cur: Cursor, size: int) -> RightEdge:
        """Read the partial tiles and bundle of a tree of `size` from storage, checking them."""
        tails: dict[int, bytearray] = {}
        for level in range(tile_levels(size)):
            nodes = level_width(size, level)
            width = nodes % TILE_WIDTH
            if width:
                data = storage.read_tile(cur, level, nodes // TILE_WIDTH)
                if data is None or len(data) != width * 32:
                    raise IntegrityError(
                        f"stored tile {level}/{nodes // TILE_WIDTH} does not match tree size {size}"
                    )
                tails[level] = bytearray(data)
        bundle_width = size % TILE_WIDTH
        bundle = bytearray()
        if bundle_width:
            row = storage.read_bundle(cur, size // TILE_WIDTH)
            if row is None or row[0] != bundle_width:
                raise IntegrityError(
                    f"stored entry bundle {size // TILE_WIDTH} does not match tree size {size}"
                )
            bundle = bytearray(row[1])
        return cls(size, tails, bundle, bundle_width)

    def _push(
        self, level: int, nodes: Sequence[bytes], tiles: list[tuple[int, int, bytes]]
    ) -> list[bytes]:
        """Append hashes to tile level `level`; return the roots of the tiles they complete."""
        tail = self.tails.get(level)
        if tail is None:
            tail = bytearray()
        index = level_width(self.size, level) >> TILE_HEIGHT  # the partial tile's index
        roots: list[bytes] = []
        position, n = 0, len(nodes)
        while position < n:
            room = TILE_WIDTH - len(tail) // 32
            tail += b"".join(nodes[position : position + room])
            position += room
            if len(tail) == _TILE_BYTES:
                full = bytes(tail)
                tiles.append((level, index, full))
                roots.append(tile_root(tile_hashes(full, TILE_WIDTH)))
                tail = bytearray()
                index += 1
        if tail and n:
            tiles.append((level, index, bytes(tail)))
        self.tails[level] = tail
        return roots

    def integrate(self, entries: Sequence[bytes], hashes: Sequence[bytes]) -> Writes:
        """Append entries; return the rows to write. Mutates self."""
        tiles: list[tuple[int, int, bytes]] = []
        level, nodes = 0, hashes
        while nodes:
            nodes = self._push(level, nodes, tiles)
            level += 1

        bundles: list[tuple[int, int, bytes]] = []
        chunk: tuple[int, int, int, bytes] | None = None
        position, n = 0, len(entries)
        bundle_index = self.size // TILE_WIDTH
        while position < n:
            take = min(TILE_WIDTH - self.bundle_width, n - position)
            encoded = encode_entry_bundle(entries[position : position + take])
            start = self.bundle_width
            self.bundle += encoded
            self.bundle_width += take
            position += take
            if self.bundle_width == TILE_WIDTH:
                bundles.append((bundle_index, TILE_WIDTH, bytes(self.bundle)))
                self.bundle, self.bundle_width = bytearray(), 0
                bundle_index += 1
            else:  # only the last stretch of a batch stays partial
                chunk = (bundle_index, start, take, encoded)
        self.size += n
        return Writes(tiles, bundles, chunk)


@dataclass(frozen=True)
class Writes:
    """What one batch writes: grown or completed tiles, completed bundles, one partial chunk."""

    tiles: list[tuple[int, int, bytes]]
    bundles: list[tuple[int, int, bytes]]
    chunk: tuple[int, int, int, bytes] | None


class Sequencer:
    """The single writer of a log in this process. Thread-safe; asyncio-friendly."""

    def __init__(
        self,
        db: Database,
        *,
        on_commit: CommitListener | None = None,
        max_batch_entries: int = 16384,
        max_batch_bytes: int = 32 << 20,
        commit_timeout: float = 120.0,
        gather_delay: float = 0.002,
    ) -> None:
        self.db = db
        self._on_commit = on_commit
        self._max_entries = max_batch_entries
        self._max_bytes = max_batch_bytes
        self._timeout = commit_timeout
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[_Batch] = deque()
        self._idle = False  # waiting for the first entry
        self._gathering = False  # waiting a moment for more entries
        self._closing = False
        self._gather = gather_delay
        self._expected = 1  # how many appenders the last commit woke
        self._thread: threading.Thread | None = None
        self._edge: RightEdge | None = None
        self.batches = 0
        self.committed = 0

    # --- appenders ---------------------------------------------------------------------------

    def _enqueue(
        self,
        entries: Sequence[bytes],
        hashes: Sequence[bytes],
        waker: Callable[[], object] | None,
        future: asyncio.Future[None] | None = None,
    ) -> tuple[_Batch, int]:
        n = len(entries)
        nbytes = sum(len(e) for e in entries) if n > 1 else len(entries[0])
        with self._cv:
            if self._closing:
                raise LedgerUnavailable("the log is closed; nothing was recorded")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledger-sequencer", daemon=True
                )
                self._thread.start()
            queue = self._queue
            batch = queue[-1] if queue else None
            # A group of entries never spans batches, so append_many is one commit.
            if batch is None or (
                batch.entries
                and (
                    len(batch.entries) + n > self._max_entries
                    or batch.nbytes + nbytes > self._max_bytes
                )
            ):
                batch = _Batch()
                queue.append(batch)
            position = len(batch.entries)
            if n == 1:
                batch.entries.append(entries[0])
                batch.hashes.append(hashes[0])
            else:
                batch.entries.extend(entries)
                batch.hashes.extend(hashes)
            batch.nbytes += nbytes
            if waker is not None:
                batch.wakers.append(waker)
            if future is not None:
                loop = future.get_loop()
                waiting = batch.futures.get(loop)
                if waiting is None:
                    waiting = batch.futures[loop] = []
                    # One watchdog per batch and event loop (not per append): if the commit
                    # never reports back, the waiters fail instead of hanging.
                    batch.timers[loop] = loop.call_later(
                        self._timeout, _expire_all, waiting, self._timeout
                    )
                waiting.append(future)
            if self._idle or (
                self._gathering and (len(queue) > 1 or len(batch.entries) >= self._expected)
            ):
                self._cv.notify()
        return batch, position

    def submit(self, entries: Sequence[bytes]) -> list[Receipt]:
        """Durably append entries (contiguously, in order); block until committed."""
        if not entries:
            return []
        hashes = [leaf_hash(e) for e in entries]
        done = _allocate_lock()
        done.acquire()
        batch, position = self._enqueue(entries, hashes, done.release)
        if not done.acquire(timeout=self._timeout):
            raise LedgerUnavailable(
                f"no commit within {self._timeout:.0f}s; treat the entries as unrecorded"
            )
        return _receipts(batch, position, hashes)

    def submit_one(self, entry: bytes) -> Receipt:
        """`submit` for one entry: the hot path, kept to the minimum of Python per append."""
        digest = _sha256(b"\x00" + entry).digest()
        done = _allocate_lock()
        done.acquire()
        with self._cv:
            batch = self._queue[-1] if self._queue else None
            if (
                batch is None
                or len(batch.entries) >= self._max_entries
                or batch.nbytes + len(entry) > self._max_bytes
                or self._closing
                or self._thread is None
            ):
                batch = None
            else:
                position = len(batch.entries)
                batch.entries.append(entry)
                batch.hashes.append(digest)
                batch.nbytes += len(entry)
                batch.wakers.append(done.release)
                if self._idle or (self._gathering and position + 1 >= self._expected):
                    self._cv.notify()
        if batch is None:  # the slow path: start the thread, a new batch, or refuse
            batch, position = self._enqueue((entry,), (digest,), done.release)
        if not done.acquire(timeout=self._timeout):
            raise LedgerUnavailable(
                f"no commit within {self._timeout:.0f}s; treat the entry as unrecorded"
            )
        if batch.error is not None:
            _receipts(batch, position, [digest])
        return Receipt(batch.first + position, digest)

    async def submit_async(self, entries: Sequence[bytes]) -> list[Receipt]:
        """Like `submit`, without blocking the event loop: thousands of tasks can wait at once."""
        if not entries:
            return []
        hashes = [leaf_hash(e) for e in entries]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        batch, position = self._enqueue(entries, hashes, None, future)
        await future
        return _receipts(batch, position, hashes)

    # --- the sequencer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    if self._closing:
                        return
                    self._idle = True
                    self._cv.wait()
                    self._idle = False
                # Group-commit delay: the appenders just woken will be back in microseconds. Give
                # them a moment (bounded) to join, so the batch is large and the commit runs
                # while they all wait instead of competing with them for the GIL.
                if (
                    self._gather > 0
                    and len(self._queue) == 1
                    and len(self._queue[0].entries) < self._expected
                    and not self._closing
                ):
                    self._gathering = True
                    self._cv.wait(self._gather)
                    self._gathering = False
                batch = self._queue.popleft()
            try:
                batch.first = self._commit(batch.entries, batch.hashes)
            except BaseException as exc:  # every failure must reach the waiting appenders
                batch.error = exc
                if not isinstance(exc, Exception):
                    raise
                log.error("ledger commit failed: %s", type(exc).__name__)
            finally:
                self._expected = len(batch.wakers) + sum(map(len, batch.futures.values()))
                for wake in batch.wakers:
                    wake()
                for loop, futures in batch.futures.items():
                    timer = batch.timers[loop]
                    # A closed event loop has nobody waiting any more.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(_resolve_all, futures, timer)
            if batch.error is None:
                self.batches += 1
                self.committed += len(batch.entries)
                if self._on_commit is not None:
                    try:
                        self._on_commit(batch.first + len(batch.entries))
                    except Exception:
                        log.exception("ledger commit listener failed")

    def _commit(self, entries: list[bytes], hashes: list[bytes]) -> int:
        """One transaction: append the batch after whatever the stored tree holds."""
        edge = self._edge
        self._edge = None  # unknown until this commit succeeds
        with self.db.transaction(lock=storage.SEQUENCER_LOCK) as cur:
            size = storage.read_tree_size(cur)
            if edge is None or edge.size != size:
                edge = RightEdge.load(cur, size)
            writes = edge.integrate(entries, hashes)
            storage.write_tiles(cur, writes.tiles)
            storage.write_bundles(cur, writes.bundles)
            if writes.chunk is not None:
                storage.write_bundle_chunk(cur, *writes.chunk)
            storage.advance_tree_size(cur, size, edge.size)
        self._edge = edge
        return size

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _expire_all(futures: list[asyncio.Future[None]], timeout: float) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(
                LedgerUnavailable(
                    f"no commit within {timeout:.0f}s; treat the entries as unrecorded"
                )
            )


def _resolve_all(futures: list[asyncio.Future[None]], timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    for future in futures:
        if not future.done():
            future.set_result(None)


def _receipts(batch: _Batch, position: int, hashes: list[bytes]) -> list[Receipt]:
    if batch.error is not None:
        exc = batch.error
        detail = str(exc) if isinstance(exc, BastionError) else type(exc).__name__
        raise LedgerUnavailable(f"the ledger could not record the entry: {detail}") from exc
    first = batch.first + position
    return [Receipt(first + i, h) for i, h in enumerate(hashes)]
