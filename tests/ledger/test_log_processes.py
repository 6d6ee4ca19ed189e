"""Crash safety (SIGKILL at random moments) and several processes appending to one log."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bastion.clock import FixedClock
from bastion.ledger import merkle, storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Database, open_database

CHILD = str(Path(__file__).with_name("_child_appender.py"))


def spawn(
    url: str, schema: str | None, tag: str, threads: int, count: int, skey: str, *extra: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "LEDGER_TEST_SKEY": skey}
    return subprocess.Popen(
        [sys.executable, CHILD, url, schema or "-", tag, str(threads), str(count), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def collect(proc: subprocess.Popen[str], acked: dict[int, bytes], guard: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ACK" and line.endswith("\n"):
            with guard:
                assert int(parts[1]) not in acked, f"index {parts[1]} acknowledged twice"
                acked[int(parts[1])] = parts[2].encode()


def kill_once(
    proc: subprocess.Popen[str],
    acked: dict[int, bytes],
    guard: threading.Lock,
    rng: random.Random,
    upto_s: float,
) -> None:
    """Let one child acknowledge something, SIGKILL it at a random moment after that, and
    check it did acknowledge (so every run tests a crash with acknowledged entries)."""
    reader = threading.Thread(target=collect, args=(proc, acked, guard))
    reader.start()
    deadline = time.monotonic() + 30
    with guard:
        start = len(acked)
    while time.monotonic() < deadline and proc.poll() is None:
        with guard:
            if len(acked) > start:
                break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, upto_s))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    with guard:
        assert len(acked) > start, proc.stderr.read() if proc.stderr else ""


def run_to_the_end(
    procs: list[subprocess.Popen[str]], acked: dict[int, bytes], guard: threading.Lock
) -> None:
    """Collect every child's acknowledgements until all of them exit cleanly."""
    readers = [threading.Thread(target=collect, args=(p, acked, guard)) for p in procs]
    for r in readers:
        r.start()
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read() if p.stderr else ""
    for r in readers:
        r.join()


def check_log(db: Database, signer: NoteSigner, acked: dict[int, bytes]) -> Log:
    log = Log(db, signer, FixedClock(), background=False)
    log.check_head()  # the signed head still matches the stored tiles
    report = log.verify_storage()
    assert report.tree_size >= len(acked)
    for index, entry in acked.items():
        assert log.entry(index) == entry, f"acknowledged entry {index} lost or changed"
    return log


def test_kill_9_at_random_moments_loses_no_acknowledged_entry(
    db_url_factory: object, signer: NoteSigner
) -> None:
    url, schema = db_url_factory()  # type: ignore[operator]
    db = open_database(url, schema=schema)
    storage.create_tables(db)
    acked: dict[int, bytes] = {}
    guard = threading.Lock()
    rng = random.Random(1234)
    try:
        for run in range(5):
            proc = spawn(url, schema, f"run{run}", 8, 0, signer.skey)
            kill_once(proc, acked, guard, rng, 0.6)
            log = check_log(db, signer, acked)
            log.close()
        # After all the kills the log still takes appends, right after the last index.
        log = check_log(db, signer, acked)
        size = log.size()
        assert log.append_entry(b"after the crashes").index == size
        cp = log.publish()
        assert cp.root_hash == merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(log.entry(i)) for i in range(cp.tree_size)]
        )
        log.close()
    finally:
        db.close()


def test_several_processes_append_to_one_log_without_forking(
    db_url_factory: object, signer: NoteSigner
) -> None:
    url, schema = db_url_factory()  # type: ignore[operator]
    db = open_database(url, schema=schema)
    storage.create_tables(db)
    acked: dict[int, bytes] = {}
    guard = threading.Lock()
    procs = [spawn(url, schema, f"p{k}", 4, 60, signer.skey) for k in range(4)]
    try:
        run_to_the_end(procs, acked, guard)
        total = 4 * 4 * 60
        assert sorted(acked) == list(range(total))  # contiguous, no index twice
        assert sorted(acked.values()) == sorted(
            f"p{k}-{t}-{i}".encode() for k in range(4) for t in range(4) for i in range(60)
        )
        log = check_log(db, signer, acked)
        leaves = [merkle.leaf_hash(acked[i]) for i in range(total)]
        # Every checkpoint any process signed is a prefix of this one tree: no fork, ever.
        with db.transaction() as cur:
            rows = cur.execute(
                "SELECT tree_size, root_hash FROM ledger_checkpoints ORDER BY tree_size"
            ).fetchall()
        assert rows, "the processes published checkpoints"
        for size, root_hash in rows:
            assert bytes(root_hash) == merkle.root_from_leaf_hashes(leaves[: int(size)])
        log.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        db.close()


def test_child_script_is_importable() -> None:
    # Guards against the child failing on import (which would make the tests above vacuous).
    out = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({CHILD!r}, run_name='x')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
