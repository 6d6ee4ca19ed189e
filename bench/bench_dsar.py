"""DSAR export: time to export a subject with 100, 1,000 and 10,000 records, both backends.

One subject per size (1 user record + N-1 events), all in one vault. Each export runs the
whole service path (policy decision, the access.decision entries in one ledger commit, the
bound read plans, opening every sealed value, the JSON document) as ``GET
/subjects/{id}/export`` does, minus HTTP. Median of ``--runs``; the ratio column is time
per record against the 100-record subject (at most linear growth: the ratio stays near 1 or
falls).

    .venv/bin/python bench/bench_dsar.py [--runs 5] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bastion.cli.home_cmd import init_home  # noqa: E402
from bastion.clock import FixedClock  # noqa: E402
from bastion.demo.platform import bootstrap, ingest, sample_event, sample_user  # noqa: E402
from bastion.gateway.subject_rights import SubjectRights  # noqa: E402
from bastion.policy import PrincipalSpec  # noqa: E402
from bastion.store import open_database  # noqa: E402

SIZES = (100, 1_000, 10_000)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run(backend: str, runs: int) -> list[tuple[int, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dsar-"))
    schema = None
    if backend == "sqlite":
        db = open_database(f"sqlite:///{tmp / 'bastion.db'}")
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        db = open_database(PG_URL, schema=schema)
    clock = FixedClock()
    rt = bootstrap(init_home(tmp / "home"), db, clock)
    try:
        ingest(rt, "users", [sample_user(n) for n in range(1, len(SIZES) + 1)])
        events, next_id = [], 1
        for user, size in enumerate(SIZES, start=1):
            for _ in range(size - 1):
                events.append(sample_event(next_id, user))
                next_id += 1
        ingest(rt, "events", events)
        rights = SubjectRights(rt)
        out = []
        for user, size in enumerate(SIZES, start=1):
            sid = f"u{user:05d}"
            me = PrincipalSpec(id=sid, role="subject", subject_id=sid)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                result = rights.export(me, sid, uuid.uuid4().hex)
                times.append(time.perf_counter() - start)
                assert result.records == size, (result.records, size)
            out.append((size, statistics.median(times)))
        return out
    finally:
        rt.close()
        if schema is not None:
            db.drop_schema()  # type: ignore[attr-defined]
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print("| backend | records | export (median) | per record | per record vs 100 |")
    print("|---|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        results = run(backend, args.runs)
        base = results[0][1] / results[0][0]
        for size, seconds in results:
            per = seconds / size
            print(
                f"| {backend} | {size:,} | {seconds * 1000:.1f} ms | {per * 1e6:.0f} µs "
                f"| {per / base:.2f} |"
            )


if __name__ == "__main__":
    main()
