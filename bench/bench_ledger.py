"""Benchmark: durable appends per second, and inclusion-proof latency from stored tiles.

For each backend (SQLite file, PostgreSQL on 127.0.0.1; ``--backends sqlite,postgresql,files``
adds the static-files log storage, fsynced files in a directory) and 1, 16 and 256 concurrent
appenders
(threads calling the synchronous ``Log.append_entry``; also 256 asyncio tasks calling
``append_entry_async``), it appends pre-encoded canonical-JSON AccessDecision entries for a fixed
time and counts receipts. A receipt is returned only after the batch's transaction committed
(SQLite WAL ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``), so every one is durable.

The same run measures the baseline: the SHA-256 RFC 6962 leaf hash of the same entries in a tight
loop (the ratio is appends/s over hashes/s), and RFC 8785 encoding of the events (the cost
``Log.append(event)`` adds on top). Then it builds a 100,000-entry log and times inclusion proofs
computed from the stored tiles (p50/p99), with a cold reader (no cache) and a warm one.

Each configuration also reports what explains its figure: entries per commit, the mean commit
latency (every append waits for one; with N appenders a commit carries at most N entries, so
N / latency bounds the rate), the median latency of a one-row durable commit on an idle log
(``commit_floor_ms``: the disk's fsync), and the process CPU time per append. ``--verify-size N``
adds a full verification of an N-entry log served over HTTP by uvicorn.

Prints one JSON document. Usage:
``python bench/bench_ledger.py [--seconds 2] [--trials 3] [--pg postgresql://...] [--out FILE]``.
The machine is shared, so each configuration runs ``--trials`` times and the best is kept
(all trials are listed); the SHA-256 baseline is the best of the same number of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bastion.clock import SystemClock
from bastion.events import SYSTEM, AccessDecision, FieldRelease, encode_event
from bastion.ledger import storage
from bastion.ledger.file_storage import FileLogStorage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.ledger.reader import LogReader
from bastion.ledger.storage import SqlLogStorage
from bastion.store import Database, open_database

ORIGIN = "bench.example/log"
PG_DEFAULT = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_events(n: int) -> list[AccessDecision]:
    return [
        AccessDecision(
            actor=SYSTEM,
            reason="support ticket",
            at=f"2026-01-01T00:00:{i % 60:02d}.000000Z",
            request_id=f"req-{i:08d}",
            action="read",
            dataset="users",
            decision="allow",
            policies=["support-read"],
            purpose="support",
            subjects=[f"subject-{i % 977}"],
            released=[
                FieldRelease(dataset="users", record=f"r{i}", field="email", transform="mask")
            ],
        )
        for i in range(n)
    ]


class Backend:
    def __init__(self, name: str, tmp: Path, pg_url: str) -> None:
        self.name, self.tmp, self.pg_url = name, tmp, pg_url

    def fresh(self) -> Database:
        if self.name in ("sqlite", "files"):  # files: the database holds nothing of the log
            return open_database(f"sqlite:///{self.tmp / f'bench-{uuid.uuid4().hex[:8]}.db'}")
        return open_database(self.pg_url, schema=f"bench_{uuid.uuid4().hex[:10]}")

    def drop(self, db: Database) -> None:
        if self.name == "postgresql":
            db.drop_schema()  # type: ignore[attr-defined]
        db.close()


def open_bench_log(db: Database, signer: NoteSigner, files: Path | None = None) -> Log:
    """A log in `db`'s tables, or (with `files`) static tlog-tiles files in that directory."""
    log_storage = None if files is None else FileLogStorage(files)
    if log_storage is None:
        storage.create_tables(db)
    else:
        log_storage.create()
    # The publisher runs as in production: it signs checkpoints while appends go on.
    return Log(
        db, signer, SystemClock(), storage=log_storage, background=True, publish_interval=0.5
    )


def run_threads(log: Log, entries: list[bytes], appenders: int, seconds: float) -> dict[str, Any]:
    counts = [0] * appenders
    start_gate = threading.Barrier(appenders + 1)
    stop_at = [0.0]

    def worker(k: int) -> None:
        i, n, c = k, len(entries), 0
        append = log.append_entry
        start_gate.wait()
        deadline = stop_at[0]
        while time.monotonic() < deadline:
            append(entries[i % n])
            i += appenders
            c += 1
        counts[k] = c

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(appenders)]
    for t in threads:
        t.start()
    before = commit_counters(log)
    stop_at[0] = time.monotonic() + seconds
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return run_result(log, before, sum(counts), elapsed)


def commit_counters(log: Log) -> tuple[int, float, float]:
    return log.sequencer.batches, log.sequencer.commit_seconds, time.process_time()


def run_result(
    log: Log, before: tuple[int, float, float], total: int, elapsed: float
) -> dict[str, Any]:
    """Throughput, and what explains it: how long a commit took (every append waits for one) and
    the CPU the process spent per append."""
    batches, commit_s, cpu = commit_counters(log)
    commits = batches - before[0]
    return {
        "appends": total,
        "seconds": round(elapsed, 3),
        "appends_per_s": round(total / elapsed),
        "commits": commits,
        "commit_ms_mean": round((commit_s - before[1]) / max(1, commits) * 1000, 2),
        "cpu_us_per_append": round((cpu - before[2]) / max(1, total) * 1e6, 1),
    }


def run_async(log: Log, entries: list[bytes], tasks: int, seconds: float) -> dict[str, Any]:
    async def main() -> tuple[int, float]:
        deadline = time.monotonic() + seconds
        counts = [0] * tasks

        async def worker(k: int) -> None:
            i, n = k, len(entries)
            while time.monotonic() < deadline:
                await log.append_entry_async(entries[i % n])
                i += tasks
                counts[k] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(tasks)))
        return sum(counts), time.perf_counter() - t0

    before = commit_counters(log)
    total, elapsed = asyncio.run(main())
    return run_result(log, before, total, elapsed)


def commit_floor_ms(db: Database, samples: int = 50) -> float:
    """Median latency of a one-row durable commit: the fsync floor every append waits for."""
    db.migrate("bench", ["CREATE TABLE IF NOT EXISTS bench_floor (k {int} PRIMARY KEY)"])
    lat = []
    for k in range(samples):
        t = time.perf_counter()
        with db.transaction(lock="bench") as cur:
            cur.execute("INSERT INTO bench_floor (k) VALUES (?)", (k,))
        lat.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(lat), 3)


def sha256_baseline(entries: list[bytes], seconds: float = 1.0) -> float:
    sha = hashlib.sha256
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for e in entries:
            sha(b"\x00" + e).digest()
        done += len(entries)
    return done / (time.perf_counter() - t0)


def encode_rate(events: list[AccessDecision]) -> float:
    t0 = time.perf_counter()
    for e in events:
        encode_event(e)
    return len(events) / (time.perf_counter() - t0)


def proof_latency(db: Database, signer: NoteSigner, size: int, samples: int) -> dict[str, Any]:
    storage.create_tables(db)
    log = Log(db, signer, SystemClock(), background=False)
    entries = [f'{{"bench":{i},"pad":"{"x" * 80}"}}'.encode() for i in range(size)]
    t0 = time.perf_counter()
    for first in range(0, size, 20000):
        log.append_entries(entries[first : first + 20000])
    build_s = time.perf_counter() - t0
    log.publish()
    rng = random.Random(7)
    indexes = [rng.randrange(size) for _ in range(samples)]

    def timed(reader_for: Any) -> dict[str, float]:
        lat = []
        for index in indexes:
            reader = reader_for()
            t = time.perf_counter()
            reader.inclusion_proof(index, size)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        return {
            "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3),
        }

    warm = LogReader(SqlLogStorage(db))
    result = {
        "tree_size": size,
        "build_s": round(build_s, 2),
        # cold: every proof reads its tiles from the DB; warm: immutable tiles and nodes cached
        "cold_reader": timed(lambda: LogReader(SqlLogStorage(db))),
        "warm_reader": timed(lambda: warm),
    }
    log.close()
    return result


def full_verification(tmp: Path, signer: NoteSigner, size: int) -> dict[str, Any]:
    """Build a `size`-entry log, serve it with uvicorn in another process, verify it all."""
    import subprocess

    from bastion.ledger.verifier import LogVerifier

    path = tmp / "verify.db"
    db = open_database(f"sqlite:///{path}")
    storage.create_tables(db)
    log = Log(db, signer, SystemClock(), background=False)
    t0 = time.perf_counter()
    for first in range(0, size, 50_000):
        n = min(50_000, size - first)
        log.append_entries(
            [f'{{"i":{i},"pad":"{"x" * 80}"}}'.encode() for i in range(first, first + n)]
        )
    log.publish()
    build_s = time.perf_counter() - t0
    log.close()
    db.close()
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(path), signer.skey, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with LogVerifier(f"http://127.0.0.1:{port}", signer.vkey, tmp / "auditor") as verifier:
            result = verifier.verify()
    finally:
        server.terminate()
        server.wait()
    return {
        "tree_size": result.size,
        "build_s": round(build_s, 1),
        "verify_s": round(result.elapsed_s, 1),
        "entries_per_s": round(result.entries_checked / result.elapsed_s),
        "bytes_fetched": result.bytes_fetched,
    }


_SERVE = """
import sys, threading, time, uvicorn
from fastapi import FastAPI
from bastion.clock import SystemClock
from bastion.ledger.http import log_router
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import open_database
db = open_database("sqlite:///" + sys.argv[1])
log = Log(db, NoteSigner.from_skey(sys.argv[2]), SystemClock(), background=False)
app = FastAPI()
app.include_router(log_router(log.reader))
server = uvicorn.Server(uvicorn.Config(app, port=int(sys.argv[3]), log_level="warning"))
def ready():
    while not server.started:
        time.sleep(0.05)
    print("ready", flush=True)
threading.Thread(target=ready, daemon=True).start()
server.run()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--pg", default=PG_DEFAULT)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--appenders", default="1,16,256")
    ap.add_argument("--proof-size", type=int, default=100_000)
    ap.add_argument(
        "--verify-size", type=int, default=0, help="Also time a full verification over HTTP."
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    events = make_events(10_000)
    entries = [encode_event(e) for e in events]
    signer = NoteSigner.generate(ORIGIN)
    sha_rate = max(sha256_baseline(entries) for _ in range(3))
    report: dict[str, Any] = {
        "benchmark": "ledger",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "entry_bytes_mean": round(statistics.mean(len(e) for e in entries)),
        "baseline": {
            "sha256_leaf_hashes_per_s": round(sha_rate),
            "rfc8785_encodes_per_s": round(encode_rate(events)),
        },
        "appends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            backend = Backend(name, Path(tmp), args.pg)
            db = backend.fresh()
            results: dict[str, Any] = {}
            if name != "files":
                results["commit_floor_ms"] = commit_floor_ms(db)
            backend.drop(db)
            modes = [("threads", int(n)) for n in args.appenders.split(",")]
            modes.append(("asyncio", max(int(n) for n in args.appenders.split(","))))
            for mode, n in modes:
                db = backend.fresh()
                files = Path(tmp) / f"files-{uuid.uuid4().hex[:8]}" if name == "files" else None
                log = open_bench_log(db, signer, files)
                try:
                    log.append_entries(entries[:100])  # warm up: tables, connections, caches
                    run = run_threads if mode == "threads" else run_async
                    trials = []
                    for _ in range(args.trials):
                        before = log.size()
                        r = run(log, entries, n, args.seconds)
                        assert log.size() == before + r["appends"], "every receipt is in the log"
                        trials.append(r)
                    # The machine is shared: keep the best trial, and show them all.
                    best = max(trials, key=lambda t: t["appends_per_s"])
                    best["trials_per_s"] = [t["appends_per_s"] for t in trials]
                    best["ratio_to_sha256"] = round(best["appends_per_s"] / sha_rate, 4)
                    best["entries_per_commit"] = round(best["appends"] / max(1, best["commits"]), 1)
                    results[f"{mode}_{n}"] = best
                    print(f"{name:10} {mode:7} {n:4}: {best['trials_per_s']}/s", file=sys.stderr)
                finally:
                    log.close()
                    backend.drop(db)
            report["appends"][name] = results
        db = Backend("sqlite", Path(tmp), args.pg).fresh()
        report["inclusion_proof_sqlite"] = proof_latency(db, signer, args.proof_size, 1000)
        db.close()
        if args.verify_size:
            report["full_verification_http"] = full_verification(
                Path(tmp), signer, args.verify_size
            )
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
