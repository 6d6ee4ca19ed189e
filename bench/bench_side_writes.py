"""Benchmark: ledger commits that carry a side write (the gateway's bulk count), per second.

    .venv/bin/python bench/bench_side_writes.py [--backends sqlite,postgresql] [--seconds 3]
        [--threads 1,16] [--out FILE]

Each appender submits one entry of about 380 bytes with a side write that does what a bulk
count does at its smallest: take a named lock on the commit's cursor (``Database.lock_in``)
and upsert one counter row. Baseline, same run, same threads: the same entries with no side
write (the sequencer's fast path). With one thread every submission is a batch of its own;
with 16 several share a commit, each side write in its own savepoint.

JSON on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bastion.clock import SystemClock
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Cursor, Database, open_database
from bench_gateway import emit_report

PG_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
COUNTER = "CREATE TABLE IF NOT EXISTS bench_counts (k TEXT PRIMARY KEY, n {int} NOT NULL DEFAULT 0)"
ENTRY = b'{"kind":"access.decision","pad":"' + b"x" * 340 + b'"}'


def count(cur: Cursor, key: str, db: Database) -> None:
    db.lock_in(cur, f"bench:{key}")
    cur.execute(
        "INSERT INTO bench_counts (k, n) VALUES (?, 1)"
        " ON CONFLICT (k) DO UPDATE SET n = bench_counts.n + 1",
        (key,),
    )


def run(log: Log, db: Database, threads: int, seconds: float, side: bool) -> float:
    done = [0] * threads
    stop = threading.Event()

    def worker(w: int) -> None:
        def write(cur: Cursor) -> None:
            count(cur, f"t{w}", db)

        while not stop.is_set():
            if side:
                log.append_entries([ENTRY], side_write=write)
            else:
                log.append_entries([ENTRY])
            done[w] += 1

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return round(sum(done) / (time.perf_counter() - start))


def bench(backend: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    schema = None
    if backend == "sqlite":
        db = open_database(f"sqlite:///{root / 'bench.db'}")
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        db = open_database(PG_URL, schema=schema)
    try:
        db.migrate("bench", [COUNTER])
        storage.create_tables(db)
        log = Log(db, NoteSigner.generate("bench.example/log"), SystemClock(), background=False)
        try:
            out: dict[str, Any] = {}
            for threads in args.threads:
                row: dict[str, Any] = {}
                for side in (False, True, False, True):  # alternated, best of two each
                    name = "side_write" if side else "baseline"
                    rate = run(log, db, threads, args.seconds, side)
                    row[name] = max(row.get(name, 0), rate)
                row["ratio"] = round(row["side_write"] / row["baseline"], 3)
                out[f"{threads}_threads"] = row
                print(f"[{backend}] {threads} threads: {row}", file=sys.stderr, flush=True)
            return out
        finally:
            log.close()
    finally:
        if schema is not None:
            db.drop_schema()  # type: ignore[attr-defined]
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--threads", type=lambda text: [int(t) for t in text.split(",")], default=[1, 16]
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {b: bench(b, args, Path(tmp)) for b in args.backends.split(",")}
    emit_report({"appends_per_s": results}, args.out)


if __name__ == "__main__":
    main()
