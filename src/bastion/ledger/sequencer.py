"""Group commit: many appenders, one sequencer, one transaction per batch.

Appenders hash their entry, enqueue it and block. One sequencer thread per process drains the
queue a batch at a time and appends the batch to the stored tiles and entry bundles in ONE
transaction that compare-and-swaps the tree size. Only after the commit returns does it wake the
batch's appenders with their indexes, so a receipt always means "durable". While one batch
commits, the next one fills up: that is what makes throughput grow with the number of appenders.

Several processes (each with its own sequencer) may share one database; the compare-and-swap on
the tree size (and, on the slow path, the log's lock: SQLite's write lock, PostgreSQL's lock on
the state row) means the log cannot fork.
Each sequencer caches the right edge of the tree (the partial tiles and bundle) and reloads it
from the database, under the lock, whenever the stored size is not the one it last wrote.

Costs that decide throughput on a small machine, and what is done about them:

- PostgreSQL round trips: with a cached right edge a batch is ONE autocommitted statement
  (`storage.PgAppender`, in the SQL driver), whose row lock and ``WHERE tree_size = old``
  are the compare-and-swap.
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

from bastion.errors import BastionError, ConfigError, InputError, IntegrityError, LedgerUnavailable
from bastion.home import Bounds
from bastion.ledger.api import Receipt, SideWrite
from bastion.ledger.log_storage import EdgeSource, LogStorage, Writes
from bastion.ledger.tiles import (
    MAX_ENTRY_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    full_tile_root,
    level_width,
    tile_levels,
)
from bastion.store import Cursor, Database

MAX_BUNDLE_CHUNKS = 16
"""A partial bundle that would lie in more chunks than this is rewritten whole when it fills
(drivers that store chunks, like the SQL one, then read a bundle in a few rows)."""

log = logging.getLogger(__name__)

# Copying a hash state that has already absorbed the RFC 6962 prefix byte is cheaper than
# creating a new one (and concatenating the prefix) for every leaf and node.
_LEAF_PREFIX = hashlib.sha256(b"\x00")
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
        "removed",
        "sides",
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
        self.sides: list[_Side] | None = None  # submissions with a side write for the commit
        self.removed: list[tuple[int, int]] | None = None  # (position, count) left out


class _Side:
    """A submission's side write, run in its batch's commit, and how it went."""

    __slots__ = ("count", "error", "position", "write")

    def __init__(self, write: SideWrite) -> None:
        self.write = write
        self.position = 0
        self.count = 0
        self.error: Exception | None = None


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
    def load(cls, source: EdgeSource, size: int) -> RightEdge:
        """Read the partial tiles and bundle of a tree of `size` from storage, checking them."""
        tails: dict[int, bytearray] = {}
        for level in range(tile_levels(size)):
            nodes = level_width(size, level)
            width = nodes % TILE_WIDTH
            if width:
                data = source.read_tile(level, nodes // TILE_WIDTH, width)
                if data is None or len(data) != width * 32:
                    raise IntegrityError(
                        f"stored tile {level}/{nodes // TILE_WIDTH} does not match tree size {size}"
                    )
                tails[level] = bytearray(data)
        bundle_width = size % TILE_WIDTH
        bundle = bytearray()
        chunks = 0
        if bundle_width:
            parts = source.read_bundle_parts(size // TILE_WIDTH, bundle_width)
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
        `MAX_BUNDLE_CHUNKS` chunks (many small commits) is rewritten whole when it fills,
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
            elif self.bundle_chunks < MAX_BUNDLE_CHUNKS:
                chunks.append((index, start, take, encoded))
            else:
                bundles.append((index, TILE_WIDTH, bytes(self.bundle) + encoded))
                compacted.append(index)
            self.bundle, self.bundle_width, self.bundle_chunks = bytearray(), 0, 0
            index += 1
        self.size += n
        return Writes(tiles, bundles, chunks, compacted)


SIDE_WRITE_LOCK = "ledger:side-write"
"""Held by a side write that commits on its own (the log's storage is not a database)."""

_SAVEPOINT = "bastion_side_write"


class Sequencer:
    """The single writer of a log in this process. Thread-safe; asyncio-friendly.

    Every submission joins the open batch the same way (`_join`), synchronous or not, one
    entry or many, and gets its receipts or its error the same way (`_receipts`).

    A submission may carry a *side write* (`api.SideWrite`): a write of the caller's
    own that becomes durable exactly when its entries do. Where the log's storage is the
    database, it runs inside the commit's transaction, in a savepoint of its own, before the
    batch's entries are integrated; if it raises, only that submission's entries are left out
    (the rest of the batch commits) and its submitter gets the exception. If the commit then
    fails, neither the side write nor the entries are kept. Where the storage is not a
    database (static files), the side write is committed first, in a transaction of its own on
    `side_db`, and then the entries are submitted: the same outcome for a side write that
    raises, and for a failed commit the side write stays (it fails closed: a reservation
    without a release). For example, counting a bulk release and recording it in one commit
    (through `Log.append_entries`, or `append_entries_async`, which take the same argument)::

        def reserve(cur: Cursor) -> None:
            db.lock_in(cur, f"bulk:{employer}")  # serialize with the counter's other writers
            ...  # count into bulk_totals with `cur`; raise BulkThresholdExceeded to refuse

        receipts = log.append_entries(entries, side_write=reserve)  # raises what reserve raised

    A side write that must serialize with other writers of its rows takes their lock itself,
    on the cursor it is given (`store.Database.lock_in`); the commit already holds the log's
    own lock (SQLite: ``ledger:sequencer``; PostgreSQL: the state row, locked first; or
    ``ledger:side-write`` when it commits alone), so that lock always comes second. Side
    writes run one after another on the sequencer's thread: keep them to a few statements.
    """

    def __init__(
        self,
        storage: LogStorage,
        *,
        side_db: Database | None = None,
        on_commit: CommitListener | None = None,
        max_batch_entries: int = 16384,
        max_batch_bytes: int = 32 << 20,
        commit_timeout: float | None = None,
        gather_delay: float = 0.005,
    ) -> None:
        self.storage = storage
        self._same_commit = storage.side_writes_in_commit
        self._side_db = side_db
        self._on_commit = on_commit
        self._max_entries = max_batch_entries
        self._max_bytes = max_batch_bytes
        # How long an appender waits for its commit (default: the bounds' commit_wait_s).
        self._timeout = Bounds().commit_wait_s if commit_timeout is None else commit_timeout
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
        self.batches = 0
        self.committed = 0
        self.reloads = 0  # commits that found the tree moved by another writer
        self.commit_seconds = 0.0  # time spent in commits (what the batches waited for)

    # --- appenders ---------------------------------------------------------------------------

    def _join(
        self, records: list[bytes], hashes: list[bytes], nbytes: int, side: _Side | None
    ) -> tuple[_Batch, int]:
        """Add a submission to the open batch (a new one if it does not fit) and wake the
        sequencer if it waits for this; return the batch and the submission's position in it.
        Holds the lock. A submission never spans batches, so `submit(entries)` is one commit."""
        queue = self._queue
        batch = queue[-1] if queue else None
        if (
            batch is None
            or self._closing
            or (
                batch.hashes
                and (
                    len(batch.hashes) + len(hashes) > self._max_entries
                    or batch.nbytes + nbytes > self._max_bytes
                )
            )
        ):
            batch = self._open_batch()
        position = len(batch.hashes)
        batch.records += records
        batch.hashes += hashes
        batch.nbytes += nbytes
        if side is not None:
            side.position, side.count = position, len(hashes)
            if batch.sides is None:
                batch.sides = [side]
            else:
                batch.sides.append(side)
        if self._idle or (
            self._gathering and (len(queue) > 1 or len(batch.hashes) >= self._expected)
        ):
            self._cv.notify()
        return batch, position

    def _open_batch(self) -> _Batch:
        """A new batch at the end of the queue. Holds the lock."""
        if self._closing:
            raise LedgerUnavailable("the log is closed; nothing was recorded")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-sequencer", daemon=True)
            self._thread.start()
        batch = _Batch()
        self._queue.append(batch)
        return batch

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

    def _side(self, write: SideWrite | None) -> _Side | None:
        """What a submission carries for its side write: a `_Side` to run in the commit, or
        nothing (no side write, or the storage cannot run it in the commit, and it has just
        committed on its own)."""
        if write is None:
            return None
        if self._same_commit:
            return _Side(write)
        self._commit_alone(write)
        return None

    def _commit_alone(self, write: SideWrite) -> None:
        if self._side_db is None:
            raise ConfigError("this log has no database to run a side write in")
        with self._side_db.transaction(lock=SIDE_WRITE_LOCK) as cur:
            write(cur)

    def submit(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        """Durably append entries (contiguously, in order); block until committed."""
        records, hashes, nbytes = _prepare(entries)
        if not hashes:
            if side_write is not None:
                self._commit_alone(side_write)
            return []
        side = self._side(side_write)
        done = _allocate_lock()
        done.acquire()
        with self._lock:
            batch, position = self._join(records, hashes, nbytes, side)
            waiter = len(batch.waiters)
            batch.waiters.append(done)
        self._wait(batch, done, waiter)
        return _receipts(batch, position, hashes, side)

    def submit_one(self, entry: bytes) -> Receipt:
        """`submit` for one entry: the same join and receipt, without the list work (the hot
        path: a nested call and a loop per append cost a measurable share of its CPU)."""
        record, digest = _prepare_one(entry)
        done = _allocate_lock()
        done.acquire()
        with self._lock:
            batch, position = self._join([record], [digest], len(record), None)
            waiter = len(batch.waiters)
            batch.waiters.append(done)
        self._wait(batch, done, waiter)
        return Receipt(_first_index(batch, position, None), digest)

    def _first_future(self, batch: _Batch, loop: _Loop, future: asyncio.Future[None]) -> None:
        """The first waiter of `loop` on `batch`: one watchdog per batch and event loop (not per
        append), so that if the commit never reports back, the waiters fail, not hang."""
        waiting = batch.futures[loop] = [future]
        batch.timers[loop] = loop.call_later(self._timeout, _expire_all, waiting, self._timeout)

    async def submit_async(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        """Like `submit`, without blocking the event loop: thousands of tasks can wait at once."""
        records, hashes, nbytes = _prepare(entries)
        if side_write is not None and not (hashes and self._same_commit):
            await asyncio.to_thread(self._commit_alone, side_write)
            side_write = None
        if not hashes:
            return []
        side = None if side_write is None else _Side(side_write)
        loop = _running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            batch, position = self._join(records, hashes, nbytes, side)
            waiting = batch.futures.get(loop)
            if waiting is None:
                self._first_future(batch, loop, future)
            else:
                waiting.append(future)
        await future
        return _receipts(batch, position, hashes, side)

    async def submit_one_async(self, entry: bytes) -> Receipt:
        """`submit_async` for one entry: the same join and receipt, without the list work."""
        record, digest = _prepare_one(entry)
        loop = _running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            batch, position = self._join([record], [digest], len(record), None)
            waiting = batch.futures.get(loop)
            if waiting is None:
                self._first_future(batch, loop, future)
            else:
                waiting.append(future)
        await future
        return Receipt(_first_index(batch, position, None), digest)

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
            end = 0
            try:
                batch.first, end = self._commit(batch)
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
                self.committed += end - batch.first
                if self._on_commit is not None:
                    try:
                        self._on_commit(end)
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

    def _commit(self, batch: _Batch) -> tuple[int, int]:
        """Append the batch after whatever the stored tree holds; return its first index and
        the tree size after it."""
        edge = self._edge
        self._edge = None  # unknown until this commit succeeds
        if edge is not None and batch.sides is None:
            # Fast path: the storage writes conditionally on the size we last wrote.
            old = edge.size
            writes = edge.integrate(batch.records, batch.hashes)
            if self.storage.append(old, edge.size, writes):
                self._edge = edge
                return old, edge.size
            edge = None  # another process moved the tree: reload under the lock
            self.reloads += 1
        with self.storage.exclusive() as tx:
            size = tx.tree_size()
            if edge is None or edge.size != size:
                if edge is not None:
                    self.reloads += 1
                edge = RightEdge.load(tx, size)
            records, hashes = batch.records, batch.hashes
            if batch.sides is not None:
                cursor = tx.cursor
                if cursor is None:
                    raise ConfigError(f"{self.storage.description} cannot run side writes")
                records, hashes = _run_side_writes(cursor, batch)
            writes = edge.integrate(records, hashes)
            tx.write(size, edge.size, writes)
        self._edge = edge
        return size, edge.size

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _run_side_writes(cur: Cursor, batch: _Batch) -> tuple[list[bytes], list[bytes]]:
    """Run the batch's side writes, each in a savepoint; return the records and hashes of the
    submissions whose side write succeeded (all of the batch's other entries included).

    Even a batch of one submission keeps its savepoint: rolling back to it is also what
    tells a side write that raised from a transaction that was lost under it (the rollback
    fails, and the commit fails as the ledger's: a 503, not the side write's error)."""
    assert batch.sides is not None
    removed: list[tuple[int, int]] = []
    for side in batch.sides:
        cur.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            side.write(cur)
        except Exception as exc:
            cur.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            side.error = exc
            removed.append((side.position, side.count))
        else:
            cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    if not removed:
        return batch.records, batch.hashes
    batch.removed = removed  # in order of position: submissions join in order
    records: list[bytes] = []
    hashes: list[bytes] = []
    start = 0
    for position, count in removed:
        records += batch.records[start:position]
        hashes += batch.hashes[start:position]
        start = position + count
    records += batch.records[start:]
    hashes += batch.hashes[start:]
    return records, hashes


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


def _first_index(batch: _Batch, position: int, side: _Side | None) -> int:
    """Where a submission's entries landed once its batch is over, or its error: its own side
    write's, else the commit's. Every kind of submission ends here."""
    if side is not None and side.error is not None:
        raise side.error
    if batch.error is not None:
        raise _failure(batch.error)
    if batch.removed is not None:  # side writes left entries before this one out
        position -= sum(count for start, count in batch.removed if start < position)
    return batch.first + position


def _receipts(
    batch: _Batch, position: int, hashes: list[bytes], side: _Side | None
) -> list[Receipt]:
    first = _first_index(batch, position, side)
    return [Receipt(first + i, h) for i, h in enumerate(hashes)]


def _prepare_one(entry: bytes) -> tuple[bytes, bytes]:
    """`_prepare` for one entry: (record, leaf hash)."""
    size = len(entry)
    if size > MAX_ENTRY_SIZE:
        _record(entry)  # raises the size error
    hasher = _LEAF_PREFIX.copy()
    hasher.update(entry)
    return size.to_bytes(2, "big") + entry, hasher.digest()


def _prepare(entries: Sequence[bytes]) -> tuple[list[bytes], list[bytes], int]:
    """(records, leaf hashes, bytes) of a submission: the per-entry work, done by the
    appender outside the sequencer's critical path."""
    records: list[bytes] = []
    hashes: list[bytes] = []
    nbytes = 0
    copy = _LEAF_PREFIX.copy
    for entry in entries:
        size = len(entry)
        if size > MAX_ENTRY_SIZE:
            _record(entry)  # raises the size error
        hasher = copy()
        hasher.update(entry)
        hashes.append(hasher.digest())
        records.append(size.to_bytes(2, "big") + entry)
        nbytes += size + 2
    return records, hashes, nbytes
