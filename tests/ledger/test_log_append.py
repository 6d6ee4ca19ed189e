"""Appending: receipts only after commit, group commit, ordering, limits, reopening."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from bastion.clock import FixedClock, iso
from bastion.errors import InputError, IntegrityError, LedgerUnavailable
from bastion.events import SYSTEM, OperatorNote, decode_event, encode_event
from bastion.ledger import merkle, storage
from bastion.ledger.checkpoint import open_checkpoint
from bastion.ledger.log import MAX_ENTRY_BYTES, Log
from bastion.ledger.note import NoteSigner
from bastion.store import Database

from .conftest import LogFactory


def note(clock: FixedClock, n: int, detail: dict[str, object] | None = None) -> OperatorNote:
    return OperatorNote(
        actor=SYSTEM,
        reason="test",
        at=iso(clock.now()),
        subject=f"note {n}",
        detail=detail or {},
    )


def test_append_returns_durable_receipt_with_index_and_leaf_hash(
    log: Log, clock: FixedClock, db: Database
) -> None:
    events = [note(clock, i) for i in range(3)]
    receipts = [log.append(e) for e in events]
    assert [r.index for r in receipts] == [0, 1, 2]
    for event, receipt in zip(events, receipts, strict=True):
        entry = encode_event(event)
        assert receipt.leaf_hash == merkle.leaf_hash(entry)
        assert log.entry(receipt.index) == entry
        assert decode_event(log.entry(receipt.index)) == event
    # Durable: a fresh connection (another reader) sees the size and the entries.
    with db.transaction() as cur:
        assert storage.read_tree_size(cur) == 3


def test_append_many_is_one_commit_at_consecutive_indexes(log: Log, clock: FixedClock) -> None:
    log.append(note(clock, 0))
    before = log.sequencer.batches
    receipts = log.append_many([note(clock, i) for i in range(1, 301)])
    assert [r.index for r in receipts] == list(range(1, 301))
    assert log.sequencer.batches == before + 1
    assert [decode_event(log.entry(i)).subject for i in (1, 256, 300)] == [  # type: ignore[union-attr]
        "note 1",
        "note 256",
        "note 300",
    ]


def test_group_commit_under_concurrency(log: Log) -> None:
    threads, per_thread = 32, 40
    results: list[list[tuple[int, bytes, bytes]]] = [[] for _ in range(threads)]

    def appender(k: int) -> None:
        for i in range(per_thread):
            entry = f"thread {k} entry {i}".encode()
            r = log.append_entry(entry)
            results[k].append((r.index, r.leaf_hash, entry))

    workers = [threading.Thread(target=appender, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    got = sorted(x for rs in results for x in rs)
    assert [g[0] for g in got] == list(range(total))  # every index once, no gaps
    for index, leaf, entry in got:
        assert log.entry(index) == entry
        assert leaf == merkle.leaf_hash(entry)
    for rs in results:  # one appender's entries keep its order
        assert [r[0] for r in rs] == sorted(r[0] for r in rs)
    # Appends shared commits.
    assert log.sequencer.batches < total
    assert log.verify_storage().entries_checked == total


def test_async_appenders_share_commits(log: Log) -> None:
    async def main() -> list[int]:
        receipts = await asyncio.gather(
            *(log.append_entry_async(f"async {i}".encode()) for i in range(500))
        )
        return [r.index for r in receipts]

    indexes = asyncio.run(main())
    assert sorted(indexes) == list(range(500))
    assert log.sequencer.batches < 500
    assert log.entry(indexes[7]) == b"async 7"


def test_oversize_entry_is_rejected_and_nothing_is_appended(log: Log, clock: FixedClock) -> None:
    log.append_entry(b"first")
    with pytest.raises(InputError, match="at most 65535 bytes"):
        log.append_entry(b"x" * (MAX_ENTRY_BYTES + 1))
    with pytest.raises(InputError, match=r"operator\.note"):
        log.append(note(clock, 1, {"blob": "y" * (70 * 1024)}))
    with pytest.raises(InputError):  # one bad event rejects the whole group
        log.append_many([note(clock, 2), note(clock, 3, {"blob": "z" * (70 * 1024)})])
    assert log.size() == 1
    assert log.append_entry(b"m" * MAX_ENTRY_BYTES).index == 1  # the limit itself is fine
    assert len(log.entry(1)) == MAX_ENTRY_BYTES


def test_inclusion_and_consistency_proofs_from_stored_tiles(log: Log) -> None:
    # Enough entries for two tile levels and partial tiles on both.
    sizes = [1, 255, 256, 257, 1000, 65536 + 300]
    size = 0
    checkpoints = []
    for target in sizes:
        log.append_entries([f"e{i}".encode() for i in range(size, target)])
        size = target
        checkpoints.append(log.publish())
    cp = checkpoints[-1]
    assert cp.tree_size == size
    assert cp.root_hash == merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(f"e{i}".encode()) for i in range(size)]
    )
    for index in (0, 1, 255, 256, 257, 999, 65535, 65536, size - 1):
        proof = log.inclusion_proof(index, size)
        merkle.verify_inclusion(
            merkle.leaf_hash(f"e{index}".encode()), index, size, proof, cp.root_hash
        )
    for old in checkpoints[:-1]:
        proof = log.consistency_proof(old.tree_size, size)
        merkle.verify_consistency(old.tree_size, size, proof, old.root_hash, cp.root_hash)
    report = log.verify_storage()
    assert report.entries_checked == size
    assert report.root_hash == cp.root_hash


def test_checkpoint_is_signed_by_the_log_key(log: Log, signer: NoteSigner) -> None:
    log.append_entry(b"hello")
    cp = log.publish()
    opened = open_checkpoint(log.checkpoint_note(), signer.verifier())
    assert (opened.size, opened.root_hash, opened.origin) == (1, cp.root_hash, signer.name)
    other = NoteSigner.generate(signer.name)
    with pytest.raises(IntegrityError):
        open_checkpoint(log.checkpoint_note(), other.verifier())


def test_background_publisher_covers_new_entries_within_seconds(make_log: LogFactory) -> None:
    log = make_log(background=True, publish_interval=0.05)
    receipt = log.append_entry(b"soon visible")
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cp = log.checkpoint()
        if cp is not None and cp.tree_size > receipt.index:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the entry did not reach a published checkpoint within 5 s")


def test_reopened_log_continues_the_same_tree(make_log: LogFactory) -> None:
    first = make_log()
    first.append_entries([f"a{i}".encode() for i in range(300)])
    root_300 = first.publish().root_hash
    first.close()
    second = make_log()
    assert second.check_head() is not None
    receipts = second.append_entries([f"a{i}".encode() for i in range(300, 700)])
    assert receipts[0].index == 300
    cp = second.publish()
    merkle.verify_consistency(300, 700, second.consistency_proof(300, 700), root_300, cp.root_hash)
    assert cp.root_hash == merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(f"a{i}".encode()) for i in range(700)]
    )


def test_two_sequencers_on_one_database_never_fork(make_log: LogFactory) -> None:
    # Two Log objects = two sequencers with their own cached right edge, as in two processes.
    logs = [make_log(), make_log()]
    acked: list[tuple[int, bytes]] = []
    guard = threading.Lock()

    def appender(k: int) -> None:
        for i in range(60):
            entry = f"log {k % 2} thread {k} entry {i}".encode()
            r = logs[k % 2].append_entry(entry)
            with guard:
                acked.append((r.index, entry))

    workers = [threading.Thread(target=appender, args=(k,)) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(i for i, _ in acked) == list(range(480))
    for index, entry in acked:
        assert logs[0].entry(index) == entry
    assert logs[0].verify_storage().entries_checked == 480


def test_publisher_refuses_to_sign_a_rewritten_history(log: Log, db: Database) -> None:
    log.append_entries([f"r{i}".encode() for i in range(300)])
    log.publish()
    log.append_entries([b"later"])
    # Rewrite leaf 256's hash (signed at size 300) in the partial level-0 tile 1.
    with db.transaction() as cur:
        data = storage.read_tile(cur, 0, 1)
        assert data is not None
        storage.write_tiles(cur, [(0, 1, bytes(32) + data[32:])])
    fresh = Log(db, log.signer, log.clock, background=False)
    try:
        with pytest.raises(IntegrityError, match="refusing to sign"):
            fresh.publish()
        with pytest.raises(IntegrityError):
            fresh.verify_storage()
        with pytest.raises(IntegrityError):
            fresh.check_head()
    finally:
        fresh.close()


def test_verify_storage_detects_a_tampered_entry(log: Log, db: Database) -> None:
    log.append_entries([f"t{i}".encode() for i in range(10)])
    log.publish()
    with db.transaction() as cur:
        row = storage.read_bundle(cur, 0)
        assert row is not None
        storage.write_bundles(cur, [(0, row[0], row[1].replace(b"t3", b"T3"))])
    with pytest.raises(IntegrityError, match="entry bundle 0"):
        Log(db, log.signer, log.clock, background=False).verify_storage()


def test_commit_failure_fails_closed(log: Log, db: Database) -> None:
    log.append_entry(b"ok")
    with db.transaction() as cur:  # break the state row so the next commit cannot proceed
        cur.execute("DELETE FROM ledger_state")
    with pytest.raises(LedgerUnavailable):
        log.append_entry(b"must not be acknowledged")


def test_open_log_refuses_a_new_key_for_a_log_that_already_signed(
    db: Database, tmp_path: Path, clock: FixedClock
) -> None:
    from bastion.cli.home_cmd import init_home
    from bastion.errors import KeyUnavailable
    from bastion.home import Home, settings_from
    from bastion.ledger.log import LOG_KEY_NAME, initialize_log, open_log

    root = tmp_path / "home"
    home = init_home(root, origin="identity.test/log")
    home = Home(home.path, settings_from({"ledger": {"origin": "identity.test/log"}}, {}))
    summary = initialize_log(db, home.keyring_dir, home.settings.log_origin, clock)
    assert summary["log_size"] == 0
    log = open_log(home, db, clock, background=False)
    log.append_entry(b"signed under the first key")
    log.publish()
    log.close()
    # Losing the key must not silently create a second identity for the same log.
    (home.keyring_dir / f"{LOG_KEY_NAME}.ed25519.pem").unlink()
    with pytest.raises(KeyUnavailable, match="restore the key"):
        open_log(home, db, clock, background=False)
    # Nor may a different key take over the stored checkpoints.
    from bastion.keys.signing import create_signing_key

    create_signing_key(home.keyring_dir, LOG_KEY_NAME)
    with pytest.raises(KeyUnavailable, match="not signed by this log's key"):
        open_log(home, db, clock, background=False)


def test_entries_range_reads_full_and_partial_bundles(log: Log) -> None:
    log.append_entries([f"r{i}".encode() for i in range(600)])
    got = list(log.entries(250, 700))
    assert [i for i, _ in got] == list(range(250, 600))
    assert all(e == f"r{i}".encode() for i, e in got)
    assert list(log.entries(5, 5)) == []


def test_reader_cache_is_bounded_in_entries_and_bytes() -> None:
    from bastion.ledger.reader import _Cache

    cache: _Cache[int, bytes] = _Cache(3, max_bytes=100)
    for k in range(5):
        cache.put(k, bytes(10))
    assert [cache.get(k) is not None for k in range(5)] == [False, False, True, True, True]
    cache.put(9, bytes(95))  # pushes out everything older to stay under 100 bytes
    assert cache.get(9) is not None and cache.get(4) is None
    cache.put(10, bytes(101))  # larger than the whole cache: not kept
    assert cache.get(10) is None
