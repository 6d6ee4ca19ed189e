"""Gateway benchmark: the cost of trust, as ratios to reading the same records from the store.

    .venv/bin/python bench/bench_gateway.py [--backend sqlite|postgresql|both] [--users 5000]
        [--seconds 10] [--rates 500,100] [--batch 500] [--workers 4] [--server-workers 2]
        [--out FILE]

The gateway runs as ``bastion serve --workers N`` in its own processes; the load comes from
this process. For each backend:

* **throughput**: released field values per second through ``POST /datasets/users/batch-read``
  (``--batch`` record ids per request, ``--workers`` requests in flight), as an engineer
  abroad reading seven interoperable fields (pseudonymized identifiers, clear others): token
  check, Cedar plan, row filter, 28 CFR 202.205 bulk counting, the durable ledger append of the
  whole release, vault open (AES-GCM), transforms, JSON. Baseline: the same batches read
  straight from the store (``SELECT`` of the records' rows by key, rows decoded, no policy, no
  ledger, no decryption), in this process.
* **latency**: single-record ``POST /datasets/users/read`` at fixed arrival rates
  (``--rates``, open loop: latency is measured from each request's scheduled time, so a
  slow server cannot hide queueing). Two reads: three fields of no sensitive category
  (no bulk counting), and three fields including a pseudonymized covered identifier (a bulk
  reservation per request). Baseline: one record read straight from the store at the same
  rate, in this process. Each latency result also gives the server's CPU time per request
  (its processes' ``/proc`` CPU time over the run, warm-up included; Linux only): 500/s
  needs it under 2 ms per request on two cores for the server alone.

JSON on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS, initialize_all, sample_user
from bastion.gateway.runtime import own_issuer
from bastion.gateway.server import free_port
from bastion.home import Home
from bastion.policy.registry import PrincipalEntry, PrincipalRegistry
from bastion.store import Database, open_database
from bastion.vault import open_vault

PG_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BATCH_FIELDS = ["user_id", "device_ids", "country", "language", "signup_date", "region", "age_band"]
PLAIN_FIELDS = ["country", "language", "region"]
COUNTED_FIELDS = ["user_id", "country", "language"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Setup:
    backend: str
    home: Home
    db: Database
    env: dict[str, str]
    ids: list[str]
    keys: list[str]
    schema: str | None


def prepare(backend: str, users: int, root: Path) -> Setup:
    env = {**os.environ}
    schema: str | None = None
    home_path = root / f"home-{backend}"
    if backend == "sqlite":
        env.pop("BASTION_DATABASE_URL", None)
        home = init_home(home_path)
        db = open_database(home.database_url)
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        env["BASTION_DATABASE_URL"] = f"{PG_URL}?options=-csearch_path%3D{schema}"
        os.environ["BASTION_DATABASE_URL"] = env["BASTION_DATABASE_URL"]
        try:
            home = init_home(home_path)
        finally:
            del os.environ["BASTION_DATABASE_URL"]
        db = open_database(PG_URL, schema=schema)
    clock = SystemClock()
    initialize_all(home, db, clock)
    register(home, db, clock, "kenji")
    vault = open_vault(home, db, clock)
    started = time.perf_counter()
    rows = [sample_user(n) for n in range(1, users + 1)]
    vault.ingest_rows("users", enumerate(rows, start=1), source="<bench>")
    ids = [str(r["user_id"]) for r in rows]
    keys = [k for i in ids if (k := vault.record_key("users", i)) is not None]
    vault.close() if hasattr(vault, "close") else vault.provider.close()
    log(f"[{backend}] ingested {users} users in {time.perf_counter() - started:.1f}s")
    return Setup(backend, home, db, env, ids, keys, schema)


def register(home: Home, db: Database, clock: SystemClock, name: str) -> None:
    """Admit the benchmark's principal: the gateway serves registered principals only."""
    attrs = PRINCIPALS[name]
    registry = PrincipalRegistry(db, clock)
    registry.migrate()
    registry.register(
        PrincipalEntry(
            issuer=own_issuer(home, clock).issuer,
            sub=name,
            roles=(attrs["role"],),
            employer=attrs.get("employer"),
            employer_country=attrs.get("employer_country"),
            max_clearance=attrs.get("clearance", "none"),
        )
    )


class Server:
    def __init__(self, setup: Setup, log_file: Path, workers: int) -> None:
        self.setup = setup
        self.workers = workers
        self.port = free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bastion.cli.main",
                    "serve",
                    "--home",
                    str(self.setup.home.path),
                    "--port",
                    str(self.port),
                    "--sweep-seconds",
                    "0",
                    "--log-level",
                    "warning",
                    "--workers",
                    str(self.workers),
                ],
                env=self.setup.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_file.read_text()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the gateway did not start")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) of the server and its worker processes so far, from
        ``/proc`` (None where there is none): what a request costs the server, which on a
        shared machine varies much less than its latency does."""
        if self.proc is None or not Path(f"/proc/{self.proc.pid}").exists():
            return None
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            total = 0
            for p in [pid, *map(int, children)]:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, ValueError, IndexError):
            return None
        return total / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Conn:
    """A lean keep-alive HTTP/1.1 client (stdlib): the load generator shares the machine's two
    cores with the server, so it should cost as little CPU as it can."""

    def __init__(self, url: str, token: str) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        try:
            self._conn.request("POST", path, body=data, headers=self.headers)
            resp = self._conn.getresponse()
            return resp.status, resp.read()
        except (http.client.HTTPException, OSError):
            self._conn.close()
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            raise

    def close(self) -> None:
        self._conn.close()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------------- throughput


def gateway_throughput(
    url: str, token: str, ids: list[str], batch: int, workers: int, seconds: float
) -> dict[str, Any]:
    context = {"purpose": "dedupe accounts across regions"}
    released = [0] * workers
    requests = [0] * workers
    errors: list[str] = []
    stop = threading.Event()

    def body(rng: random.Random) -> dict[str, Any]:
        return {"record_ids": rng.sample(ids, batch), "fields": BATCH_FIELDS, "context": context}

    def worker(w: int) -> None:
        rng = random.Random(w)
        conn = Conn(url, token)
        try:
            while not stop.is_set():
                status, data = conn.post("/datasets/users/batch-read", body(rng))
                if status != 200:
                    errors.append(f"{status} {data[:200]!r}")
                    continue
                out = json.loads(data)
                released[w] += sum(len(rec["values"]) for rec in out["records"])
                requests[w] += 1
        finally:
            conn.close()

    warm = Conn(url, token)  # token cache, policy engine, connections
    for _ in range(3):
        status, data = warm.post("/datasets/users/batch-read", body(random.Random(0)))
        if status != 200:
            raise RuntimeError(f"warm-up failed: {status} {data[:300]!r}")
    warm.close()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    cpu0 = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "values_per_s": round(sum(released) / elapsed),
        "requests_per_s": round(sum(requests) / elapsed, 1),
        "batches": sum(requests),
        "values_per_batch": round(sum(released) / max(1, sum(requests))),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "client_cpu_s": round(time.process_time() - cpu0, 2),
        "elapsed_s": round(elapsed, 2),
    }


def store_throughput(db: Database, keys: list[str], batch: int, seconds: float) -> dict[str, Any]:
    """The same kind of batches, read straight from the vault's table: no policy, no ledger,
    no decryption. Rows are fetched and their clear columns decoded, counted per field."""
    rng = random.Random(99)
    values = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = rng.sample(keys, batch)
        marks = ", ".join("?" * len(chunk))
        rows = db.query(
            "SELECT record_key, clear, sealed FROM vault_records WHERE dataset = ? AND "
            f"record_key IN ({marks})",
            ["users", *chunk],
        )
        for _key, clear, sealed in rows:
            json.loads(clear)
            bytes(sealed)
            values += len(BATCH_FIELDS)
        batches += 1
    elapsed = time.perf_counter() - start
    return {"values_per_s": round(values / elapsed), "batches": batches}


# ---------------------------------------------------------------------------------- latency


def open_loop(
    call: Callable[[int], bool], rate: float, seconds: float, threads: int
) -> dict[str, Any]:
    """Issue request k at start + k/rate; latency counts from that scheduled time."""
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter() + 0.2

    def run() -> None:
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ok = call(k)
            done = time.perf_counter()
            with lock:
                latencies.append(done - due)
                if not ok:
                    failures[0] += 1

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return {
        "target_rate": rate,
        "achieved_rate": round(len(ms) / elapsed, 1),
        "requests": len(ms),
        "failures": failures[0],
        "p50_ms": round(pct(ms, 0.50), 2),
        "p90_ms": round(pct(ms, 0.90), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def gateway_latency(
    url: str, token: str, ids: list[str], fields: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    local = threading.local()

    def call(k: int) -> bool:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = Conn(url, token)
        body = {
            "record_id": ids[k % len(ids)],
            "fields": fields,
            "context": {"purpose": "support lookup"},
        }
        try:
            status, data = conn.post("/datasets/users/read", body)
        except (http.client.HTTPException, OSError):
            return False
        return status == 200 and len(json.loads(data)["records"]) == 1

    for k in range(100):  # warm-up
        call(k)
    return open_loop(call, rate, seconds, threads=24)


def store_latency(db: Database, keys: list[str], rate: float, seconds: float) -> dict[str, Any]:
    def call(k: int) -> bool:
        rows = db.query(
            "SELECT clear, sealed FROM vault_records WHERE dataset = ? AND record_key = ?",
            ("users", keys[k % len(keys)]),
        )
        if rows:
            json.loads(rows[0][0])
        return len(rows) == 1

    return open_loop(call, rate, seconds, threads=8)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def bench_backend(backend: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    setup = prepare(backend, args.users, root)
    try:
        token = own_issuer(setup.home, SystemClock()).issue("kenji", PRINCIPALS["kenji"])
        # kenji sees user_id only as a pseudonym, so he names records by their vault keys
        # (the tokens he is given), never by raw ids (see ``Gate.addressing``).
        with Server(setup, root / f"server-{backend}.log", args.server_workers) as srv:
            log(f"[{backend}] gateway up at {srv.url}; throughput for {args.seconds}s ...")
            gw_tp = gateway_throughput(
                srv.url, token, setup.keys, args.batch, args.workers, args.seconds
            )
            log(f"[{backend}] {gw_tp}")
            store_tp = store_throughput(setup.db, setup.keys, args.batch, min(args.seconds, 5))
            log(f"[{backend}] store baseline {store_tp}")
            lat: dict[str, Any] = {}
            bases: dict[float, Any] = {}
            for rate in args.rates:
                for name, fields in (
                    ("no_bulk_count", PLAIN_FIELDS),
                    ("bulk_counted", COUNTED_FIELDS),
                ):
                    log(f"[{backend}] single-record latency ({name}) at {rate}/s ...")
                    cpu0 = srv.cpu_seconds()
                    res = gateway_latency(srv.url, token, setup.keys, fields, rate, args.seconds)
                    cpu1 = srv.cpu_seconds()
                    # Warm-up requests included: 100 of them against rate × seconds.
                    res["server_cpu_ms_per_request"] = (
                        round((cpu1 - cpu0) * 1000 / (res["requests"] + 100), 3)
                        if cpu0 is not None and cpu1 is not None
                        else None
                    )
                    lat[f"{name}@{rate:g}/s"] = res
                    log(f"[{backend}] {res}")
                bases[rate] = store_latency(setup.db, setup.keys, rate, min(args.seconds, 5))
                log(f"[{backend}] store baseline latency at {rate}/s {bases[rate]}")
            health = httpx.get(srv.url + "/health", timeout=10).json()
        return {
            "backend": backend,
            "users": args.users,
            "server_workers": args.server_workers,
            "throughput": {
                "gateway": gw_tp,
                "store_baseline": store_tp,
                "ratio_to_store": ratio(gw_tp["values_per_s"], store_tp["values_per_s"]),
                "goal_values_per_s": 50_000,
            },
            "latency": {
                **{
                    name: {
                        **res,
                        "p50_ratio_to_store": ratio(
                            res["p50_ms"], bases[res["target_rate"]]["p50_ms"]
                        ),
                        "p99_ratio_to_store": ratio(
                            res["p99_ms"], bases[res["target_rate"]]["p99_ms"]
                        ),
                    }
                    for name, res in lat.items()
                },
                "store_baseline": {f"{r:g}/s": b for r, b in bases.items()},
                "goal_p99_ms_at_500_per_s": 10,
            },
            "ledger_size_after": health.get("log_size"),
        }
    finally:
        if setup.schema is not None:
            setup.db.drop_schema()  # type: ignore[attr-defined]
        setup.db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[500.0, 100.0],
        help="fixed arrival rates for the latency runs, comma-separated",
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="batch requests in flight")
    parser.add_argument("--server-workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            results.append(bench_backend(backend, args, Path(tmp)))
    emit_report({"results": results}, args.out)


def emit_report(body: dict[str, Any], out: Path | None) -> None:
    """Print a benchmark's JSON report, with the machine it ran on, and keep it in ``out``."""
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_end": os.getloadavg(),
        },
        **body,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
