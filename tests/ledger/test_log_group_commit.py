"""The group-commit machinery: how batches are stored, how waiters are woken, how a sequencer
that lost a race recovers, and what happens when a commit hangs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bastion.errors import LedgerUnavailable
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.sequencer import MAX_BUNDLE_CHUNKS, Sequencer
from bastion.store import Database

from .conftest import LogFactory


def chunk_rows(db: Database, index: int) -> list[tuple[int, int]]:
    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT first_entry, entry_count FROM ledger_bundle_chunks"
            " WHERE bundle_index = ? ORDER BY first_entry",
            (index,),
        ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def whole_row(db: Database, index: int) -> bool:
    with db.transaction() as cur:
        row = cur.execute(
            "SELECT 1 FROM ledger_bundles WHERE bundle_index = ?", (index,)
        ).fetchone()
    return row is not None


def test_each_entry_is_written_once_as_the_chunk_of_its_commit(log: Log, db: Database) -> None:
    entries = [f"c{i}".encode() for i in range(812)]
    for first in (0, 100, 200, 300):  # three commits fill bundle 0, the fourth starts bundle 1
        log.append_entries(entries[first : first + 100])
    log.append_entries(entries[400:])  # bundles 2 and 3 lie whole in this batch
    assert chunk_rows(db, 0) == [(0, 100), (100, 100), (200, 56)]
    assert not whole_row(db, 0)
    assert chunk_rows(db, 1) == [(0, 44), (44, 100), (144, 112)]
    assert whole_row(db, 2) and chunk_rows(db, 2) == []
    assert chunk_rows(db, 3) == [(0, 44)] and not whole_row(db, 3)
    assert [e for _, e in log.entries(0, 812)] == entries
    assert log.verify_storage().entries_checked == 812


def test_a_bundle_filled_by_many_small_commits_is_rewritten_as_one_row(
    log: Log, db: Database
) -> None:
    entries = [f"s{i}".encode() for i in range(260)]
    per_commit = 15  # 16 chunks of 15 = 240 entries, then the commit that fills the bundle
    for first in range(0, 240, per_commit):
        log.append_entries(entries[first : first + per_commit])
    assert len(chunk_rows(db, 0)) == MAX_BUNDLE_CHUNKS
    log.append_entries(entries[240:])
    assert whole_row(db, 0) and chunk_rows(db, 0) == []
    assert chunk_rows(db, 1) == [(0, 4)]
    assert [e for _, e in log.entries(0, 260)] == entries
    log.publish()
    assert log.verify_storage().entries_checked == 260


def test_a_sequencer_that_lost_the_race_reloads_and_appends_after_the_winner(
    make_log: LogFactory,
) -> None:
    # Two logs on one database = two sequencers, each caching the tree's edge (two processes).
    first, second = make_log(), make_log()
    first.append_entries([b"a0", b"a1"])
    second.append_entries([b"b0"])  # nothing cached yet: it loads size 2 under the lock
    assert second.sequencer.reloads == 0
    # `first` still caches size 2: its compare-and-swap fails, it reloads, appends at 3.
    assert first.append_entry(b"a2").index == 3
    assert first.sequencer.reloads == 1
    assert second.append_entry(b"b1").index == 4
    assert second.sequencer.reloads == 1
    assert second.append_entry(b"b2").index == 5  # its cache was right: no reload
    assert second.sequencer.reloads == 1
    assert first.sequencer.reloads == 1
    assert [e for _, e in first.entries(0, 6)] == [b"a0", b"a1", b"b0", b"a2", b"b1", b"b2"]
    assert first.verify_storage().entries_checked == 6


@pytest.fixture
def stalled(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Sequencer, threading.Event]]:
    """A sequencer whose next commit hangs until the event is set."""
    storage.create_tables(db)
    release = threading.Event()
    real_commit = Sequencer._commit

    def slow_commit(self: Sequencer, batch: Any) -> tuple[int, int]:
        release.wait(30)
        return real_commit(self, batch)

    monkeypatch.setattr(Sequencer, "_commit", slow_commit)
    sequencer = Sequencer(storage.SqlLogStorage(db), commit_timeout=0.3)
    yield sequencer, release
    release.set()
    sequencer.close()


def test_waiters_that_time_out_fail_and_the_others_are_still_woken(
    stalled: tuple[Sequencer, threading.Event],
) -> None:
    sequencer, release = stalled
    outcomes: list[object] = []
    guard = threading.Lock()

    def append(k: int) -> None:
        try:
            result: object = sequencer.submit_one(f"t{k}".encode())
        except LedgerUnavailable as exc:
            result = exc
        with guard:
            outcomes.append(result)

    threads = [threading.Thread(target=append, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Nobody was acknowledged: the commit had not returned when they gave up.
    assert len(outcomes) == 5
    assert all(isinstance(o, LedgerUnavailable) and "no commit within" in str(o) for o in outcomes)
    release.set()
    # The batch they left behind commits; waking its (gone) waiters must not break the
    # sequencer: the next append is acknowledged after it.
    assert sequencer.submit_one(b"after").index == 5


def test_async_waiters_time_out_without_blocking_the_event_loop(
    stalled: tuple[Sequencer, threading.Event],
) -> None:
    sequencer, release = stalled

    async def main() -> list[object]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(sequencer.submit_one_async(f"a{k}".encode()) for k in range(3)),
            return_exceptions=True,
        )
        tick.cancel()
        assert ticks > 5  # the loop kept running while the appenders waited
        return list(results)

    results = asyncio.run(main())
    assert all(isinstance(r, LedgerUnavailable) for r in results)
    release.set()
    assert sequencer.submit_one(b"after").index == 3


def test_many_threads_are_all_woken_in_order_of_their_batch(log: Log) -> None:
    # Baton passing: each woken appender wakes the next; every one must get its receipt.
    results: dict[int, int] = {}
    guard = threading.Lock()
    start = threading.Barrier(64)

    def append(k: int) -> None:
        start.wait()
        for i in range(20):
            receipt = log.append_entry(f"{k}:{i}".encode())
            with guard:
                results[receipt.index] = k

    threads = [threading.Thread(target=append, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == list(range(64 * 20))
    assert log.sequencer.batches < 64 * 20


def test_a_lost_postgresql_connection_fails_the_append_and_the_next_reconnects(
    log: Log, db: Database
) -> None:
    log.append_entries([b"x0"])
    log.append_entry(b"x1")  # with a cached edge, PostgreSQL commits on the sequencer's own link
    assert isinstance(log.storage, storage.SqlLogStorage)
    appender = log.storage._appender
    if db.dialect == "sqlite":  # SQLite commits through the store's connection
        assert appender is None
        return
    assert appender is not None
    pid = appender._conn.info.backend_pid
    with db.transaction() as cur:
        cur.execute("SELECT pg_terminate_backend(?)", (pid,))
    with pytest.raises(LedgerUnavailable):
        log.append_entry(b"lost with the connection")
    assert log.append_entry(b"x2").index == 2  # reloaded under the lock on the store's link
    assert log.append_entry(b"x3").index == 3  # and a new link of its own
    assert log.storage._appender is not None and log.storage._appender is not appender
    assert [e for _, e in log.entries(0, 4)] == [b"x0", b"x1", b"x2", b"x3"]


def test_full_tile_root_is_the_rfc6962_subtree_root() -> None:
    import os

    from bastion.ledger.tiles import TILE_WIDTH, full_tile_root, tile_hashes, tile_root

    for _ in range(3):
        tile = os.urandom(32 * TILE_WIDTH)
        assert full_tile_root(tile) == tile_root(tile_hashes(tile, TILE_WIDTH))
    with pytest.raises(ValueError):
        full_tile_root(tile[:-32])
