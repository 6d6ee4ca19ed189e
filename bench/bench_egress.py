"""Egress: a full ``records`` flow to the files destination, against a plain DuckDB COPY.

Same run, same rows: ``--rows`` synthetic events (``synth_events``, shared with
``bench_snapshot``) are ingested into a fresh home (SQLite, or PostgreSQL with
``--backend postgresql``), and the same rows are loaded in clear into a DuckDB table. The
flow is the US measurement partner's (``us-measurement``, permitted by the pack's
``us-measurement-partner-receives-engagement``): ``user_id`` and ``device_id`` pseudonymized
(flow tokens), ``video_id``, ``event_type`` and ``region`` kept, ``ts`` generalized to the
hour, ``watch_time_s`` truncated to 5 s, mode full, to the ``files`` destination. Per
repetition:

* **baseline**: DuckDB ``COPY (SELECT <the same 7 columns> FROM events) TO ... (FORMAT
  parquet, COMPRESSION zstd)`` from the table in clear: no pseudonyms, no encryption, no
  manifest;
* **flow**: ``FlowRunner.run`` end to end: the ``egress.extract`` entry, the vault opening
  the sealed fields page by page, the transforms, Parquet chunks, the signed manifest and
  its ``egress.manifest`` entry (spooled and fsynced), a published checkpoint and proof,
  HPKE sealing of every chunk, and the directory destination's delivery;
* **verify** (the recipient): ``verify_delivery`` of the delivered directory (signature,
  inclusion proof, HPKE open and SHA-256 of every chunk, schema, replay state, the decrypted
  files written out), as a ratio to reading and hashing (SHA-256) the delivered files' bytes.

The 28 CFR 202.205 bulk estimate refuses a flow of covered personal identifiers reaching
more than 100,000 users (twenty events per user: above 2M rows). ``--restricted auto``
declares the flow a restricted transaction only then (``restricted_transaction: {basis:
...}``, which the checks allow because both identifiers are pseudonymized and ``ts`` is
generalized); ``yes``/``no`` force it.

    python bench/bench_egress.py --rows 1000000 --repeat 3 --out bench/out/egress.json
    python bench/bench_egress.py --rows 10000000 --repeat 1 --phases
    python bench/bench_egress.py --rows 100000 --repeat 1 --profile bench/out/egress.prof
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.demo.platform import bootstrap
from bastion.egress import payload, runner
from bastion.egress.manifest import SIGNING_KEY_NAME
from bastion.egress.trust import build_trust_bundle
from bastion.egress.verify import SqliteReplayState, verify_delivery
from bastion.egress.wiring import Egress, open_egress
from bastion.events import Actor
from bastion.gateway.runtime import Runtime
from bastion.keys.signing import load_or_create_signing_key
from bastion.ledger.anchors import log_anchors
from bastion.store import open_database
from bench_gateway import PG_URL, emit_report, log
from synth_events import ingest_events, synth_events, users_for

FLOW = "engagement-us"
ADMIN = Actor(id="ops-bench", kind="operator")
BULK_LIMIT = 100_000  # covered personal identifiers, 28 CFR 202.205
FIELDS = {
    "user_id": "pseudonymize",
    "device_id": "pseudonymize",
    "video_id": "keep",
    "event_type": "keep",
    "ts": "{generalize: hour}",
    "watch_time_s": "{truncate: 5}",
    "region": "keep",
}


def flow_yaml(name: str, recipient: X25519PrivateKey, restricted: bool) -> str:
    public = payload.public_key_to_b64(recipient.public_key())
    fields = "\n".join(f"      {name}: {t}" for name, t in FIELDS.items())
    basis = (
        "    restricted_transaction: {basis: 'bench: CISA security requirements, agreement B-14'}\n"
        if restricted
        else ""
    )
    return f"""
flows:
  - name: {name}
    version: 1
    kind: records
    recipient:
      id: us-measurement
      employer: measure-co
      employer_country: US
      location_country: US
      public_key: {public}
    source:
      dataset: events
      mode: full
    fields:
{fields}
{basis}    schedule: {{every: 1d}}
    destination: {{type: files, path: outbox}}
"""


# ------------------------------------------------------------------------------ phase timing


class Phases:
    """Wall time per step of a run, by wrapping the functions the runner calls (``--phases``).
    The wrappers cost a few calls per page, nothing per row."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, phase: str, *, generator: bool = False) -> None:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed_iter(it: Iterator[Any]) -> Iterator[Any]:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    seconds[phase] += time.perf_counter() - t0
                    return
                seconds[phase] += time.perf_counter() - t0
                yield item

        @functools.wraps(original)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = original(*a, **kw)
            seconds[phase] += time.perf_counter() - t0
            return timed_iter(iter(out)) if generator else out

        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self, egress: Egress) -> None:
        self.wrap(runner, "open_snapshot", "extract: open sealed pages", generator=True)
        self.wrap(runner, "build_table", "transform: tokens, generalize")
        self.wrap(payload, "encode_chunk", "parquet: encode chunks")
        self.wrap(runner.FlowRunner, "_spool", "spool: write + fsync")
        self.wrap(runner, "seal_delivery", "seal: HPKE")
        ctx = egress.context
        make = ctx.destination

        def destination(flow: Any) -> Any:
            d = make(flow)
            self.wrap(d, "deliver", "deliver: files destination")
            return d

        ctx.destination = destination
        self._undo.append(lambda: setattr(ctx, "destination", make))

    def take(self, total: float) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["other (log, manifest, checks, concat)"] = round(total - sum(self.seconds.values()), 3)
        self.seconds.clear()
        return out


# ----------------------------------------------------------------------------------- driver


def open_backend(backend: str, root: Path) -> tuple[Runtime, str | None]:
    home = init_home(root / "home")
    schema = None
    if backend == "postgresql":
        schema = f"bench_egress_{uuid.uuid4().hex[:10]}"
        db = open_database(PG_URL, schema=schema)
    else:
        db = open_database(home.database_url)
    return bootstrap(home, db, SystemClock()), schema


def hash_files(directory: Path) -> tuple[float, int]:
    """Seconds to read and SHA-256 every delivered file; total bytes."""
    t0 = time.perf_counter()
    total = 0
    for path in sorted(directory.iterdir()):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
                total += len(block)
        h.hexdigest()
    return time.perf_counter() - t0, total


def baseline_copy(con: duckdb.DuckDBPyConnection, out: Path) -> float:
    columns = ", ".join(f'"{c}"' for c in FIELDS)
    t0 = time.perf_counter()
    con.execute(
        f"COPY (SELECT {columns} FROM events) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    )
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    users = users_for(args.rows)
    restricted = {"yes": True, "no": False}.get(args.restricted, users > BULK_LIMIT)
    log(f"generating {args.rows:,} events ({users:,} users) ...")
    t0 = time.perf_counter()
    source = synth_events(root / "synth", args.rows)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    rt, schema = open_backend(args.backend, root)
    log(f"[{args.backend}] home ready in {time.perf_counter() - t0:.1f}s")
    try:
        log(f"[{args.backend}] ingesting ...")
        ingest_s = ingest_events(rt.vault, source)
        log(f"[{args.backend}] ingested in {ingest_s:.1f}s")
        con = duckdb.connect(str(root / "baseline.duckdb"))
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{source}')")
        egress = open_egress(rt.home, rt.db, rt.vault, rt.ledger, rt.clock)
        recipient = X25519PrivateKey.generate()
        # One flow per repetition, all loaded before any run: each run is a first, full run
        # of its flow (same work every time), and the load-time bulk estimate sees no
        # earlier delivery. (A second full run of one flow is refused by the recipient:
        # its entry's cursor_after is the flow's cursor, its manifest's 0; see the docs.)
        flows = [f"{FLOW}-{i}" for i in range(1, args.repeat + 1)]
        for name in flows:
            egress.loader.load(
                flow_yaml(name, recipient, restricted),
                source="bench-flows.yaml",
                actor=ADMIN,
                reason="bench: measurement partner engagement",
            )
        key = load_or_create_signing_key(rt.home.keyring_dir, SIGNING_KEY_NAME)
        trust = build_trust_bundle(
            log_anchors(rt.ledger),
            [("custodian", key.public_key())],
            {name: sorted(FIELDS) for name in flows},
        )
        phases = Phases() if args.phases else None
        if phases:
            phases.install(egress)
        runs: list[dict[str, Any]] = []
        for i in range(1, args.repeat + 1):
            base_s = baseline_copy(con, root / f"baseline-{i}.parquet")
            profiler = cProfile.Profile() if args.profile and i == 1 else None
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            result = egress.runner.run(flows[i - 1])
            if profiler:
                profiler.disable()
            flow_s = time.perf_counter() - t0
            assert result.status == "delivered" and result.rows == args.rows, result
            delivered = rt.home.path / "outbox" / flows[i - 1] / str(result.manifest_id)
            hash_s, nbytes = hash_files(delivered)
            received = root / f"received-{i}"
            state = SqliteReplayState(root / f"state-{i}.sqlite")
            t0 = time.perf_counter()
            verified = verify_delivery(delivered, trust, recipient, state=state, out=received)
            verify_s = time.perf_counter() - t0
            assert verified.rows == args.rows
            run: dict[str, Any] = {
                "run": i,
                "baseline_s": round(base_s, 3),
                "flow_s": round(flow_s, 3),
                "baseline_rows_per_s": round(args.rows / base_s),
                "flow_rows_per_s": round(args.rows / flow_s),
                "ratio": round(base_s / flow_s, 4),
                "chunks": result.chunks,
                "delivered_bytes": nbytes,
                "verify_s": round(verify_s, 3),
                "sha256_s": round(hash_s, 3),
                "verify_ratio": round(verify_s / hash_s, 1),
            }
            if phases:
                run["phases_s"] = phases.take(flow_s)
            if profiler:
                profiler.dump_stats(args.profile)
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
                log(text.getvalue())
            log(f"[{args.backend}] {run}")
            runs.append(run)
            shutil.rmtree(delivered)
            shutil.rmtree(received, ignore_errors=True)
        con.close()
    finally:
        rt.close()
        if schema is not None:
            rt.db.drop_schema()  # type: ignore[attr-defined]
        rt.db.close()
    return {
        "bench": "egress",
        "backend": args.backend,
        "rows": args.rows,
        "users": users,
        "restricted_transaction": restricted,
        "flow": FIELDS,
        "chunk_rows": egress.context.chunk_rows,
        "ingest_s": round(ingest_s, 1),
        "goal_ratio": 0.3,
        "summary": {
            "ratio": spread([r["ratio"] for r in runs], 4),
            "flow_rows_per_s": spread([r["flow_rows_per_s"] for r in runs], 0),
            "baseline_rows_per_s": spread([r["baseline_rows_per_s"] for r in runs], 0),
            "verify_ratio_to_sha256": spread([r["verify_ratio"] for r in runs], 1),
        },
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--restricted", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--phases", action="store_true", help="time each step of the run")
    ap.add_argument("--profile", type=Path, help="cProfile the first run into this file")
    ap.add_argument("--workdir", type=Path, help="where the homes go (default: a temp dir)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-egress-", dir=args.workdir) as tmp:
        body = bench(args, Path(tmp))
    body["machine_note"] = os.environ.get("BENCH_NOTE", "")
    emit_report(body, args.out)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
