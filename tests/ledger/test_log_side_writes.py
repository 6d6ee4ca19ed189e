"""Side writes: a caller's database write that becomes durable exactly when its entries do.

Each test runs on both databases and on both log storages: the database's own tables (the
side write runs inside the ledger's commit) and static files (it commits first, on its own).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.clock import FixedClock
from bastion.errors import LedgerUnavailable
from bastion.ledger import storage
from bastion.ledger.file_storage import FileLogStorage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.ledger.sequencer import Sequencer
from bastion.store import Cursor, Database, open_database

from .test_log_processes import kill_once, spawn

TABLE = "CREATE TABLE IF NOT EXISTS side_rows (entry TEXT PRIMARY KEY)"


class Refused(Exception):
    """What a side write raises to refuse its submission (like BulkThresholdExceeded)."""


@pytest.fixture(params=["database", "files"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def side_log(
    db: Database, kind: str, tmp_path: Path, signer: NoteSigner, clock: FixedClock
) -> Iterator[Log]:
    with db.transaction() as cur:
        cur.execute(TABLE)
    log_storage = None if kind == "database" else FileLogStorage(tmp_path / "log")
    if log_storage is None:
        storage.create_tables(db)
    else:
        log_storage.create()
    log = Log(db, signer, clock, storage=log_storage, background=False)
    yield log
    log.close()


def insert(entry: str) -> Callable[[Cursor], None]:
    def write(cur: Cursor) -> None:
        cur.execute("INSERT INTO side_rows (entry) VALUES (?)", (entry,))

    return write


def insert_then_refuse(entry: str) -> Callable[[Cursor], None]:
    def write(cur: Cursor) -> None:
        cur.execute("INSERT INTO side_rows (entry) VALUES (?)", (entry,))
        raise Refused(entry)

    return write


def rows(db: Database) -> list[str]:
    return [str(r[0]) for r in db.query("SELECT entry FROM side_rows ORDER BY entry")]


def test_a_side_write_commits_with_its_entries(side_log: Log, db: Database) -> None:
    receipts = side_log.append_entries([b"a", b"b"], side_write=insert("a+b"))
    assert [r.index for r in receipts] == [0, 1]
    assert rows(db) == ["a+b"]
    assert [e for _, e in side_log.entries(0, 2)] == [b"a", b"b"]


def test_a_raising_side_write_leaves_no_entry_and_no_row(side_log: Log, db: Database) -> None:
    side_log.append_entry(b"before")
    with pytest.raises(Refused):
        side_log.append_entries([b"refused"], side_write=insert_then_refuse("refused"))
    assert rows(db) == []  # what it wrote before raising is rolled back
    assert side_log.size() == 1
    assert side_log.append_entry(b"after").index == 1  # and the log carries on
    assert [e for _, e in side_log.entries(0, 2)] == [b"before", b"after"]
    assert side_log.verify_storage().entries_checked == 2


def test_side_write_commits_fill_and_compact_tiles_and_bundles(side_log: Log, db: Database) -> None:
    """Commits with side writes write every kind of row (a partial bundle's chunks, a bundle
    filled through more chunks than a bundle keeps, so rewritten whole, full tiles): what
    they stored is the log, entry for entry and hash for hash."""
    entries = [f"e{i}".encode() for i in range(600)]
    sizes = [7] * 40 + [320]  # 280 entries in 40 small commits, then one of 320
    start = 0
    for n, size in enumerate(sizes):
        side_log.append_entries(entries[start : start + size], side_write=insert(f"r{n:02d}"))
        start += size
    assert len(rows(db)) == len(sizes)
    assert [e for _, e in side_log.entries(0, 600)] == entries
    assert side_log.verify_storage().entries_checked == 600


def test_async_side_writes_behave_the_same(side_log: Log, db: Database) -> None:
    async def main() -> None:
        (ok,) = await side_log.append_entries_async([b"ok"], side_write=insert("ok"))
        assert ok.index == 0
        with pytest.raises(Refused):
            await side_log.append_entries_async([b"no"], side_write=insert_then_refuse("no"))

    asyncio.run(main())
    assert rows(db) == ["ok"]
    assert [e for _, e in side_log.entries(0, 5)] == [b"ok"]


def test_only_the_refused_submission_is_left_out_of_a_shared_batch(
    side_log: Log, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submissions that share one commit: the refused one's entries go, the others' indexes
    close up, and each receipt names the entry stored at its index."""
    side_log.append_entry(b"first")
    release = threading.Event()
    real_commit = Sequencer._commit
    calls = 0

    def gated(self: Sequencer, batch: Any) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:  # hold the blocker's commit while the others queue behind it
            release.wait(30)
        return real_commit(self, batch)

    monkeypatch.setattr(Sequencer, "_commit", gated)
    results: dict[str, object] = {}

    def submit(name: str, entries: list[bytes], side: Callable[[Cursor], None] | None) -> None:
        try:
            results[name] = side_log.append_entries(entries, side_write=side)
        except Exception as exc:
            results[name] = exc

    blocker = threading.Thread(target=submit, args=("blocker", [b"blocker"], None))
    blocker.start()
    while calls == 0:
        time.sleep(0.001)
    plan: list[tuple[str, list[bytes], Callable[[Cursor], None] | None]] = [
        ("kept-1", [b"k1a", b"k1b"], insert("kept-1")),
        ("refused-1", [b"r1a", b"r1b", b"r1c"], insert_then_refuse("refused-1")),
        ("plain", [b"p"], None),
        ("refused-2", [b"r2"], insert_then_refuse("refused-2")),
        ("kept-2", [b"k2"], insert("kept-2")),
    ]
    threads = []
    for name, entries, side in plan:  # one at a time, so they join the batch in this order
        queued = sum(len(b.hashes) for b in side_log.sequencer._queue)
        thread = threading.Thread(target=submit, args=(name, entries, side))
        thread.start()
        threads.append(thread)
        if kind_of(side_log) == "database" or side is None or name.startswith("kept"):
            while sum(len(b.hashes) for b in side_log.sequencer._queue) == queued:
                time.sleep(0.001)
        else:  # files: a refused side write fails before its submission joins any batch
            thread.join(10)
    release.set()
    for thread in [blocker, *threads]:
        thread.join(30)
    assert isinstance(results["refused-1"], Refused)
    assert isinstance(results["refused-2"], Refused)
    stored = dict(side_log.entries(0, 100))
    kept = [b"first", b"blocker", b"k1a", b"k1b", b"p", b"k2"]
    assert list(stored.values()) == kept
    for name, entries, _ in plan:
        if name.startswith("refused"):
            continue
        receipts = results[name]
        assert isinstance(receipts, list)
        assert [stored[r.index] for r in receipts] == entries
    assert rows(db) == ["kept-1", "kept-2"]
    assert side_log.verify_storage().entries_checked == len(kept)


def kind_of(log: Log) -> str:
    return "files" if isinstance(log.storage, FileLogStorage) else "database"


def test_a_failed_commit_keeps_neither_side_write_nor_entries(
    side_log: Log, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit fails after the side write ran (the storage refuses the write): on the
    database nothing of it stays; with static files the side write had committed first, so
    it stays and the entries do not (fail closed: a reservation without a release)."""
    side_log.append_entry(b"first")
    real_exclusive = type(side_log.storage).exclusive

    class Broken(Exception):
        pass

    def exclusive(self: Any) -> Any:
        manager = real_exclusive(self)

        class Failing:
            def __enter__(self) -> Any:
                tx = manager.__enter__()
                real_write = tx.write

                def write(*args: Any) -> None:
                    real_write(*args)
                    raise Broken("the disk went away")

                tx.write = write
                return tx

            def __exit__(self, *exc: Any) -> Any:
                return manager.__exit__(*exc)

        return Failing()

    monkeypatch.setattr(type(side_log.storage), "exclusive", exclusive)
    if kind_of(side_log) == "files":  # its fast path does not run side writes: break it too
        monkeypatch.setattr(type(side_log.storage), "append", broken_append)
    with pytest.raises(LedgerUnavailable):
        side_log.append_entries([b"lost"], side_write=insert("lost"))
    monkeypatch.undo()
    if kind_of(side_log) == "database":
        assert rows(db) == []
        assert side_log.size() == 1
    else:
        assert rows(db) == ["lost"]
    assert [e for _, e in side_log.entries(0, 5)] == [b"first"]
    assert side_log.append_entry(b"next").index == 1


def broken_append(*args: Any) -> bool:
    raise RuntimeError("the disk went away")


def test_kill_9_never_leaves_a_side_write_without_its_entry(
    db_url_factory: object, signer: NoteSigner, kind: str, tmp_path: Path
) -> None:
    """Children append with side writes and are killed at random moments. On the database,
    the rows and the logged entries are always the same set; with static files every logged
    entry has its row (a row may lack its entry: the side write commits first)."""
    url, schema = db_url_factory()  # type: ignore[operator]
    db = open_database(url, schema=schema)
    with db.transaction() as cur:
        cur.execute(TABLE)
    files = None if kind == "database" else tmp_path / "log"
    log_storage = None if files is None else FileLogStorage(files)
    if log_storage is None:
        storage.create_tables(db)
    else:
        log_storage.create()
    acked: dict[int, bytes] = {}
    guard = threading.Lock()
    rng = random.Random(99)
    try:
        for run in range(3):
            proc = spawn(url, schema, f"s{run}", 4, 0, signer.skey, str(files or "-"), "side")
            kill_once(proc, acked, guard, rng, 0.4)
        log = Log(db, signer, FixedClock(), storage=log_storage, background=False)
        logged = {entry.decode() for _, entry in log.entries(0, log.size())}
        stored = set(rows(db))
        assert {e.decode() for e in acked.values()} <= logged
        if kind == "database":
            assert stored == logged
        else:
            assert logged <= stored
        assert log.verify_storage().entries_checked == len(logged)
        log.close()
    finally:
        db.close()
