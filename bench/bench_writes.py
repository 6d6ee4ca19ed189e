"""Write benchmark: batch writes as a ratio to ingest of the same rows, and single-write latency.

    .venv/bin/python bench/bench_writes.py [--backend sqlite|postgresql|both] [--users 1000]
        [--runs 3] [--rows 20000] [--batch 500] [--workers 2] [--rates 200,500]
        [--seconds 10] [--server-workers 2] [--out FILE]

The gateway runs as ``bastion serve --workers N`` in its own processes; the load comes from
this process (``bench_gateway``'s server, client and open-loop helpers). The writer is the
events service (a registered US service principal), writing the ``events`` dataset. For each
backend and each of ``--runs`` runs:

* **batch writes**: ``--rows`` new events through ``POST /datasets/events/records``, in
  batches of ``--batch`` (``--workers`` requests in flight): validation, pseudonymization of
  ``user_id``, sealing under each subject's data key, the Cedar decision, and the
  ``data.write`` entry whose commit stores the rows. Figure: sealed values written per second.
  Baseline, same run: ``Vault.ingest_rows`` of the same rows (the same event ids and values)
  into a second vault on the same backend that holds the same users, in this process, as
  ``bastion ingest`` does minus reading the file. The ratio is gateway / ingest (goal >= 0.5).
* **single writes**: one new event per ``POST``, open loop at each of ``--rates`` (latency
  from each request's scheduled time), p50 and p99 (goal p99 <= 15 ms at 200/s), with the
  server's CPU time per request.

The figures of every run are printed, then the median and range over the runs. JSON on
stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS, sample_event
from bastion.gateway.runtime import own_issuer
from bastion.vault import open_vault
from bastion.vault.sealing import DatasetLayout
from bench_gateway import Conn, Server, Setup, emit_report, log, open_loop, prepare, register

WRITER = "events-service"
PATH = "/datasets/events/records"


class EventIds:
    """Fresh event ids for every write of the benchmark, in one vault (thread-safe)."""

    def __init__(self, users: int) -> None:
        self.users = users
        self.next = 1
        self.lock = threading.Lock()

    def rows(self, n: int) -> list[dict[str, Any]]:
        with self.lock:
            first, self.next = self.next, self.next + n
        return [sample_event(i, 1 + i % self.users) for i in range(first, first + n)]


def sealed_per_row(setup: Setup, row: dict[str, Any]) -> int:
    """Values of one event that are sealed (AES-GCM under the subject's key) when stored."""
    vault = open_vault(setup.home, setup.db, SystemClock())
    try:
        layout = DatasetLayout.of(vault.catalog.dataset("events"))
    finally:
        vault.provider.close()
    return sum(1 for f in layout.sealed if row.get(f.name) is not None)


# -------------------------------------------------------------------------------- batch writes


def gateway_batches(
    url: str, token: str, rows: list[dict[str, Any]], batch: int, workers: int
) -> dict[str, Any]:
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    todo = iter(chunks)
    lock = threading.Lock()
    errors: list[str] = []
    written = [0] * workers

    def worker(w: int) -> None:
        conn = Conn(url, token)
        try:
            while True:
                with lock:
                    chunk = next(todo, None)
                if chunk is None:
                    return
                status, data = conn.post(PATH, {"records": chunk, "mode": "insert"})
                if status != 200:
                    errors.append(f"{status} {data[:300]!r}")
                    continue
                written[w] += len(json.loads(data)["records"])
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "rows": sum(written),
        "rows_per_s": round(sum(written) / elapsed),
        "batches_per_s": round(len(chunks) / elapsed, 2),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_s": round(elapsed, 2),
    }


def ingest_baseline(setup: Setup, rows: list[dict[str, Any]]) -> dict[str, Any]:
    vault = open_vault(setup.home, setup.db, SystemClock())
    try:
        start = time.perf_counter()
        result = vault.ingest_rows("events", enumerate(rows, start=1), source="<bench>")
        elapsed = time.perf_counter() - start
    finally:
        vault.provider.close()
    return {
        "rows": int(result.rows),
        "rows_per_s": round(int(result.rows) / elapsed),
        "elapsed_s": round(elapsed, 2),
    }


# ------------------------------------------------------------------------------- single writes


def single_latency(
    url: str, token: str, ids: EventIds, rate: float, seconds: float
) -> dict[str, Any]:
    local = threading.local()

    def call(_k: int) -> bool:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = Conn(url, token)
        try:
            status, data = conn.post(PATH, {"records": ids.rows(1), "mode": "insert"})
        except (http.client.HTTPException, OSError):
            return False
        return status == 200 and len(json.loads(data)["records"]) == 1

    for k in range(100):  # warm-up: token cache, policy engine, connections
        call(k)
    return open_loop(call, rate, seconds, threads=24)


# ------------------------------------------------------------------------------------- driver


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def bench_backend(backend: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    served = prepare(backend, args.users, root / "served")
    baseline = prepare(backend, args.users, root / "baseline")
    try:
        clock = SystemClock()
        register(served.home, served.db, clock, WRITER)
        token = own_issuer(served.home, clock).issue(WRITER, PRINCIPALS[WRITER])
        ids = EventIds(args.users)
        per_row = sealed_per_row(served, sample_event(1, 1))
        runs: list[dict[str, Any]] = []
        with Server(served, root / f"server-{backend}.log", args.server_workers) as srv:
            single_latency(srv.url, token, ids, 50, 1)  # warm every worker before run 1
            for run in range(1, args.runs + 1):
                rows = ids.rows(args.rows)
                log(f"[{backend}] run {run}: {len(rows)} rows in batches of {args.batch} ...")
                gw = gateway_batches(srv.url, token, rows, args.batch, args.workers)
                base = ingest_baseline(baseline, rows)
                out: dict[str, Any] = {
                    "run": run,
                    "batch": {
                        "gateway": {**gw, "sealed_values_per_s": gw["rows_per_s"] * per_row},
                        "ingest": {**base, "sealed_values_per_s": base["rows_per_s"] * per_row},
                        "ratio_to_ingest": round(gw["rows_per_s"] / base["rows_per_s"], 3),
                    },
                    "single": {},
                }
                log(f"[{backend}] run {run}: {out['batch']}")
                for rate in args.rates:
                    cpu0 = srv.cpu_seconds()
                    res = single_latency(srv.url, token, ids, rate, args.seconds)
                    cpu1 = srv.cpu_seconds()
                    res["server_cpu_ms_per_request"] = (
                        round((cpu1 - cpu0) * 1000 / (res["requests"] + 100), 3)
                        if cpu0 is not None and cpu1 is not None
                        else None
                    )
                    out["single"][f"{rate:g}/s"] = res
                    log(f"[{backend}] run {run}: single writes at {rate:g}/s {res}")
                runs.append(out)
        summary: dict[str, Any] = {
            "batch_ratio_to_ingest": spread([r["batch"]["ratio_to_ingest"] for r in runs]),
            "batch_gateway_sealed_values_per_s": spread(
                [r["batch"]["gateway"]["sealed_values_per_s"] for r in runs]
            ),
            "batch_ingest_sealed_values_per_s": spread(
                [r["batch"]["ingest"]["sealed_values_per_s"] for r in runs]
            ),
        }
        for rate in args.rates:
            key = f"{rate:g}/s"
            for q in ("p50_ms", "p99_ms", "achieved_rate", "server_cpu_ms_per_request"):
                vals = [r["single"][key][q] for r in runs if r["single"][key][q] is not None]
                if vals:
                    summary[f"single@{key}_{q}"] = spread(vals)
        return {
            "backend": backend,
            "users": args.users,
            "server_workers": args.server_workers,
            "sealed_values_per_event": per_row,
            "goals": {"batch_ratio_to_ingest": 0.5, "single_p99_ms_at_200_per_s": 15},
            "summary": summary,
            "runs": runs,
        }
    finally:
        for setup in (served, baseline):
            if setup.schema is not None:
                setup.db.drop_schema()  # type: ignore[attr-defined]
            setup.db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000, help="events per batch-write run")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="batch requests in flight")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[200.0, 500.0],
        help="fixed arrival rates for the single-write runs, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--server-workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            root = Path(tmp) / backend
            (root / "served").mkdir(parents=True)
            (root / "baseline").mkdir(parents=True)
            results.append(bench_backend(backend, args, root))
    emit_report({"results": results}, args.out)


if __name__ == "__main__":
    main()
