"""Group commit: many appenders, one sequencer, one transaction per batch.

Appenders hash their entry, enqueue it and block. One sequencer thread per process drains the
queue a batch at a time and appends the batch to the stored tiles and entry bundles in ONE
transaction that compare-and-swaps the tree size. Only after the commit returns does it wake the
batch's appenders with their indexes, so a receipt always means "durable". While one batch
commits, the next one fills up: that is what makes throughput grow with the number of appenders.

Several processes (each with its own sequencer) may share one database; the compare-and-swap on
the tree size (and, on the slow path, the ``ledger:sequencer`` lock) means the log cannot fork.
Each sequencer caches the right edge of the tree (the partial tiles and bundle) and reloads it
from the database, under the lock, whenever the stored size is not the one it last wrote.

Costs that decide throughput on a small machine, and what is done about them:

- PostgreSQL round trips: with a cached right edge a batch is ONE autocommitted statement
  (`storage.PgAppender`), whose row lock and ``WHERE tree_size = old`` are the compare-and-swap.
- Waking threads: waking every waiter at once makes them all fight for the GIL (each wakes, finds
  it taken, sleeps again; those that wait past the switch interval force extra switches). Instead
  the sequencer wakes the first waiter and each woken waiter wakes the next ("baton passing"), so
  each finds the GIL free. Async appenders cost no thread switch: one callback per event loop
  resolves that loop's futures.
- Per-entry work (leaf hash, the bundle's length prefix) is done by the appender, outside the
  sequencer's critical path; the sequencer only concatenates. Entries are written once (as the
  bundle chunk of their commit), not again when their bundle fills.
- With N appenders a commit carries at most N entries, so throughput is bounded by N over the
  commit latency; the sequencer waits (briefly) for the appenders it just woke, so that they
  share one commit instead of straggling into two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bastion.errors import BastionError, InputError, IntegrityError, LedgerUnavailable
from bastion.ledger import storage
from bastion.ledger.api import Receipt
from bastion.ledger.storage import Writes
from bastion.ledger.tiles import (
    MAX_ENTRY_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    level_width,
    tile_levels,
)
from bastion.store import Cursor, Database

log = logging.getLogger(__name__)

# Copying a hash state that has already absorbed the RFC 6962 prefix byte is cheaper than
# creating a new one (and concatenating the prefix) for every leaf and node.
_LEAF_PREFIX = hashlib.sha256(b"\x00")
_NODE_PREFIX = hashlib.sha256(b"\x01")
_allocate_lock = threading.Lock
_running_loop = asyncio.get_running_loop

_TILE_BYTES = TILE_WIDTH * 32

CommitListener = Callable[[int], None]
"""Called after each commit with the new tree size."""

_Loop = asyncio.AbstractEventLoop


class _Batch:
    """Entries that will share one transaction, and how to wake whoever waits on them."""

    __slots__ = (
        "chained",
        "error",
        "finished",
        "first",
        "futures",
        "hashes",
        "nbytes",
        "records",
        "timers",
        "waiters",
    )

    def __init__(self) -> None:
        # Each entry already carries its uint16 length prefix: a bundle is their concatenation.
        self.records: list[bytes] = []
        self.hashes: list[bytes] = []
        self.nbytes = 0
        # Threads, woken one after the other (see `_wait`).
        self.waiters: list[threading.Lock] = []
        # Async appenders: one thread-safe callback per event loop wakes all of that loop's futures.
        self.futures: dict[_Loop, list[asyncio.Future[None]]] = {}
        self.timers: dict[_Loop, asyncio.TimerHandle] = {}
        self.first = -1
        self.error: BaseException | None = None
        self.finished = False  # set (under the sequencer's lock) once the commit is over
        # False once a waiter gave up before the commit ended: then the sequencer wakes every
        # waiter itself instead of passing the baton (a gone waiter would break the chain).
        self.chained = True


def _leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash, SHA-256(0x00 || entry)."""
    hasher = _LEAF_PREFIX.copy()
    hasher.update(entry)
    return hasher.digest()


def full_tile_root(tile: bytes) -> bytes:
    """The root of the perfect 256-leaf subtree whose hashes a full tile holds (RFC 6962 node
    hashes, level by level): what the tile contributes to the tile level above."""
    if len(tile) != _TILE_BYTES:
        raise ValueError("only full tiles are hashed into the level above")
    copy = _NODE_PREFIX.copy
    level = tile
    while len(level) > 32:
        parents = []
        for pair in range(0, len(level), 64):
            hasher = copy()
            hasher.update(level[pair : pair + 64])
            parents.append(hasher.digest())
        level = b"".join(parents)
    return level


def _record(entry: bytes) -> bytes:
    """An entry as an entry bundle holds it: big-endian uint16 length, then the bytes."""
    try:
        return len(entry).to_bytes(2, "big") + entry
    except OverflowError:
        raise InputError(
            f"entry is {len(entry)} bytes; an entry bundle holds at most {MAX_ENTRY_SIZE}"
        ) from None


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
    bundle_chunks: int = 0  # rows the partial bundle is stored in

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
        chunks = 0
        if bundle_width:
            parts = storage.read_bundle_parts(cur, size // TILE_WIDTH)
            if parts is None or parts.width != bundle_width:
                raise IntegrityError(
                    f"stored entry bundle {size // TILE_WIDTH} does not match tree size {size}"
                )
            bundle, chunks = bytearray(parts.data), parts.chunks
        return cls(size, tails, bundle, bundle_width, chunks)

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
                roots.append(full_tile_root(full))
                tail = bytearray()
                index += 1
        if tail and n:
            tiles.append((level, index, bytes(tail)))
        self.tails[level] = tail
        return roots

    def integrate(self, records: Sequence[bytes], hashes: Sequence[bytes]) -> Writes:
        """Append entries (length-prefixed records); return the rows to write. Mutates self.

        Entries are written once: each batch stores its stretch of a bundle as a chunk row, and
        a bundle lies in the chunks that filled it. Only a bundle that ends up in more than
        `storage.MAX_BUNDLE_CHUNKS` chunks (many small commits) is rewritten whole when it fills,
        so that reading it stays a few rows.
        """
        tiles: list[tuple[int, int, bytes]] = []
        level, nodes = 0, hashes
        while nodes:
            nodes = self._push(level, nodes, tiles)
            level += 1

        bundles: list[tuple[int, int, bytes]] = []
        chunks: list[tuple[int, int, int, bytes]] = []
        compacted: list[int] = []
        position, n = 0, len(records)
        index = self.size // TILE_WIDTH
        while position < n:
            start = self.bundle_width
            take = min(TILE_WIDTH - start, n - position)
            encoded = b"".join(records[position : position + take])
            position += take
            if start + take < TILE_WIDTH:  # the last stretch of the batch: the bundle stays partial
                chunks.append((index, start, take, encoded))
                self.bundle += encoded
                self.bundle_width += take
                self.bundle_chunks += 1
                break
            if start == 0:  # the whole bundle is in this batch
                bundles.append((index, TILE_WIDTH, encoded))
            elif self.bundle_chunks < storage.MAX_BUNDLE_CHUNKS:
                chunks.append((index, start, take, encoded))
            else:
                bundles.append((index, TILE_WIDTH, bytes(self.bundle) + encoded))
                compacted.append(index)
            self.bundle, self.bundle_width, self.bundle_chunks = bytearray(), 0, 0
            index += 1
        self.size += n
        return Writes(tiles, bundles, chunks, compacted)


class Sequencer:
    """The single writer of a log in this process. Thread-safe; asyncio-friendly."""

    def __init__(
        self,
        db: Database,
        *,
        on_commit: CommitListener | None = None,
        max_batch_entries: int = 16384,
        max_batch_bytes: int = 32 << 20,
        commit_timeout: float | None = None,
        gather_delay: float = 0.005,
    ) -> None:
        self.db = db
        self._on_commit = on_commit
        self._max_entries = max_batch_entries
        self._max_bytes = max_batch_bytes
        # How long an appender waits for its commit (default: the database's commit_wait_s).
        self._timeout = db.bounds.commit_wait_s if commit_timeout is None else commit_timeout
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queue: deque[_Batch] = deque()
        self._idle = False  # waiting for the first entry
        self._gathering = False  # waiting a moment for more entries
        self._closing = False
        self._gather = gather_delay
        self._expected = 1  # how many appenders the last commit woke
        self._last_commit = 0.0  # how long it took, in seconds
        self._thread: threading.Thread | None = None
        self._edge: RightEdge | None = None
        self._appender: storage.PgAppender | None = None  # PostgreSQL's one-statement commit
        self.batches = 0
        self.committed = 0
        self.reloads = 0  # commits that found the tree moved by another writer
        self.commit_seconds = 0.0  # time spent in commits (what the batches waited for)

    # --- appenders ---------------------------------------------------------------------------

    def _open_batch(self, records: int, nbytes: int) -> _Batch:
        """The batch that new entries join (a new one if they do not fit). Holds the lock."""
        queue = self._queue
        if queue and not self._closing:
            batch = queue[-1]
            # A group of entries never spans batches, so append_many is one commit.
            if not batch.hashes or (
                len(batch.hashes) + records <= self._max_entries
                and batch.nbytes + nbytes <= self._max_bytes
            ):
                return batch
        if self._closing:
            raise LedgerUnavailable("the log is closed; nothing was recorded")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-sequencer", daemon=True)
            self._thread.start()
        batch = _Batch()
        queue.append(batch)
        return batch

    def _joined(self, batch: _Batch) -> None:
        """An appender joined `batch`: wake the sequencer if it waits for this. Holds the lock."""
        if self._idle or (
            self._gathering and (len(self._queue) > 1 or len(batch.hashes) >= self._expected)
        ):
            self._cv.notify()

    def _wait(self, batch: _Batch, done: threading.Lock, waiter: int) -> None:
        """Block until `batch` is committed (or failed), then pass the baton to the next waiter."""
        if not done.acquire(timeout=self._timeout):
            with self._lock:
                if not batch.finished:
                    batch.chained = False  # the sequencer will wake the others itself
                    raise LedgerUnavailable(
                        f"no commit within {self._timeout:.0f}s; treat the entries as unrecorded"
                    )
            done.acquire()  # finished meanwhile: our turn in the chain is imminent
        if batch.chained:
            waiters = batch.waiters
            if waiter + 1 < len(waiters):
                waiters[waiter + 1].release()

    def submit(self, entries: Sequence[bytes]) -> list[Receipt]:
        """Durably append entries (contiguously, in order); block until committed."""
        if not entries:
            return []
        hashes = [_leaf_hash(e) for e in entries]
        records = [_record(e) for e in entries]
        nbytes = sum(map(len, records))
        done = _allocate_lock()
        done.acquire()
        with self._lock:
            batch = self._open_batch(len(records), nbytes)
            position = len(batch.hashes)
            batch.records += records
            batch.hashes += hashes
            batch.nbytes += nbytes
            waiter = len(batch.waiters)
            batch.waiters.append(done)
            self._joined(batch)
        self._wait(batch, done, waiter)
        return _receipts(batch, position, hashes)

    def submit_one(self, entry: bytes) -> Receipt:
        """`submit` for one entry: the hot path, kept to the minimum of Python per append."""
        size = len(entry)
        if size > MAX_ENTRY_SIZE:
            _record(entry)  # raises the size error
        hasher = _LEAF_PREFIX.copy()
        hasher.update(entry)
        digest = hasher.digest()
        record = size.to_bytes(2, "big") + entry
        done = _allocate_lock()
        done.acquire()
        with self._lock:
            queue = self._queue
            batch = queue[-1] if queue else None
            if (
                batch is None
                or self._closing
                or len(batch.hashes) >= self._max_entries
                or batch.nbytes + size + 2 > self._max_bytes
            ):
                batch = self._open_batch(1, size + 2)
            position = len(batch.hashes)
            batch.records.append(record)
            batch.hashes.append(digest)
            batch.nbytes += size + 2
            waiter = len(batch.waiters)
            batch.waiters.append(done)
            if self._idle or self._gathering:
                self._joined(batch)
        self._wait(batch, done, waiter)
        if batch.error is not None:
            raise _failure(batch.error)
        return Receipt(batch.first + position, digest)

    def _add_future(self, batch: _Batch, loop: _Loop, future: asyncio.Future[None]) -> None:
        waiting = batch.futures.get(loop)
        if waiting is None:
            waiting = batch.futures[loop] = []
            # One watchdog per batch and event loop (not per append): if the commit never
            # reports back, the waiters fail instead of hanging.
            batch.timers[loop] = loop.call_later(self._timeout, _expire_all, waiting, self._timeout)
        waiting.append(future)

    async def submit_async(self, entries: Sequence[bytes]) -> list[Receipt]:
        """Like `submit`, without blocking the event loop: thousands of tasks can wait at once."""
        if not entries:
            return []
        hashes = [_leaf_hash(e) for e in entries]
        records = [_record(e) for e in entries]
        nbytes = sum(map(len, records))
        loop = _running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            batch = self._open_batch(len(records), nbytes)
            position = len(batch.hashes)
            batch.records += records
            batch.hashes += hashes
            batch.nbytes += nbytes
            self._add_future(batch, loop, future)
            self._joined(batch)
        await future
        return _receipts(batch, position, hashes)

    async def submit_one_async(self, entry: bytes) -> Receipt:
        """`submit_async` for one entry: the asyncio hot path."""
        size = len(entry)
        if size > MAX_ENTRY_SIZE:
            _record(entry)  # raises the size error
        hasher = _LEAF_PREFIX.copy()
        hasher.update(entry)
        digest = hasher.digest()
        record = size.to_bytes(2, "big") + entry
        loop = _running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            queue = self._queue
            batch = queue[-1] if queue else None
            if (
                batch is None
                or self._closing
                or len(batch.hashes) >= self._max_entries
                or batch.nbytes + size + 2 > self._max_bytes
            ):
                batch = self._open_batch(1, size + 2)
            position = len(batch.hashes)
            batch.records.append(record)
            batch.hashes.append(digest)
            batch.nbytes += size + 2
            waiting = batch.futures.get(loop)
            if waiting is None:
                self._add_future(batch, loop, future)
            else:
                waiting.append(future)
            if self._idle or self._gathering:
                self._joined(batch)
        await future
        if batch.error is not None:
            raise _failure(batch.error)
        return Receipt(batch.first + position, digest)

    # --- the sequencer thread ----------------------------------------------------------------

    def _run(self) -> None:
        cv, queue = self._cv, self._queue
        while True:
            with cv:
                while not queue:
                    if self._closing:
                        return
                    self._idle = True
                    cv.wait()
                    self._idle = False
                # Group-commit delay: the appenders the last commit woke are coming back. Wait
                # for them (bounded) so they share this commit, instead of committing a few now
                # and making the rest wait for this commit AND their own.
                if (
                    self._gather > 0
                    and len(queue) == 1
                    and len(queue[0].hashes) < self._expected
                    and not self._closing
                ):
                    self._gathering = True
                    cv.wait(self._gather_for())
                    self._gathering = False
                batch = queue.popleft()
            started = time.monotonic()
            try:
                batch.first = self._commit(batch.records, batch.hashes)
            except BaseException as exc:  # every failure must reach the waiting appenders
                batch.error = exc
                if not isinstance(exc, Exception):
                    raise
                log.error("ledger commit failed: %s", type(exc).__name__)
            finally:
                self._last_commit = time.monotonic() - started
                self.commit_seconds += self._last_commit
                self._finish(batch)
            if batch.error is None:
                self.batches += 1
                self.committed += len(batch.hashes)
                if self._on_commit is not None:
                    try:
                        self._on_commit(batch.first + len(batch.hashes))
                    except Exception:
                        log.exception("ledger commit listener failed")

    def _gather_for(self) -> float:
        """How long to wait for the expected appenders: `gather_delay` at most, and no longer
        than a commit takes (past that, committing now and the stragglers next is faster)."""
        return min(self._gather, self._last_commit)

    def _finish(self, batch: _Batch) -> None:
        """Wake whoever waits on `batch`: its threads (baton passing) and its event loops."""
        with self._lock:
            batch.finished = True
            chained = batch.chained
        waiters = batch.waiters
        self._expected = len(waiters) + sum(map(len, batch.futures.values()))
        if waiters:
            if chained:
                waiters[0].release()  # each woken waiter wakes the next (see `_wait`)
            else:
                for done in waiters:
                    done.release()
        for loop, futures in batch.futures.items():
            timer = batch.timers[loop]
            # A closed event loop has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, futures, timer)

    def _commit(self, records: list[bytes], hashes: list[bytes]) -> int:
        """Append the batch after whatever the stored tree holds; return its first index."""
        edge = self._edge
        self._edge = None  # unknown until this commit succeeds
        if edge is not None and self.db.dialect == "postgresql":
            # Fast path: one autocommitted statement, conditional on the size we last wrote.
            if self._appender is None:
                self._appender = storage.PgAppender.open(self.db)
            old = edge.size
            writes = edge.integrate(records, hashes)
            try:
                appended = self._appender.append(old, edge.size, writes)
            except BaseException:
                self._appender.close()  # a fresh connection next time
                self._appender = None
                raise
            if appended:
                self._edge = edge
                return old
            edge = None  # another process moved the tree: reload under the lock
            self.reloads += 1
        sqlite = self.db.dialect == "sqlite"
        with self.db.transaction(lock=storage.SEQUENCER_LOCK) as cur:
            # The compare-and-swap first (SQLite: one statement fewer than reading the size);
            # if the tree moved, reload its edge: the lock is held, so it cannot move again.
            if sqlite and edge is not None and storage.swap_tree_size(cur, edge.size, len(hashes)):
                size = edge.size
            else:
                size = storage.read_tree_size(cur, for_update=not sqlite)
                if edge is None or edge.size != size:
                    if edge is not None:
                        self.reloads += 1
                    edge = RightEdge.load(cur, size)
                storage.advance_tree_size(cur, size, size + len(hashes))
            writes = edge.integrate(records, hashes)
            storage.write_tiles(cur, writes.tiles)
            storage.write_batch_bundles(cur, writes.bundles, writes.chunks, writes.compacted)
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
        appender, self._appender = self._appender, None
        if appender is not None:
            appender.close()


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


def _failure(exc: BaseException) -> LedgerUnavailable:
    detail = str(exc) if isinstance(exc, BastionError) else type(exc).__name__
    failure = LedgerUnavailable(f"the ledger could not record the entry: {detail}")
    failure.__cause__ = exc
    return failure


def _receipts(batch: _Batch, position: int, hashes: list[bytes]) -> list[Receipt]:
    if batch.error is not None:
        raise _failure(batch.error)
    first = batch.first + position
    return [Receipt(first + i, h) for i, h in enumerate(hashes)]
