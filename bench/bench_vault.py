"""Vault benchmark: ingest, open and shred, as ratios to a bare AES-GCM loop in the same run.

    .venv/bin/python bench/bench_vault.py [--users 1000] [--events 15000] [--reps 5] [--out FILE]

Figures (JSON on stdout, progress on stderr), on SQLite and on PostgreSQL:

* ingest: sealed values per second, end to end, each into a fresh database:
  - ``ingest_users_file``: the users Parquet file (read, checked, a new data key and erasure
    secret per user, pseudonyms, sealed, stored, committed);
  - ``ingest_events_file``: the events Parquet file, users already in the vault;
  - ``ingest_events_rows``: the same events as Python dicts through ``Vault.ingest_rows``
    (checked row by row, as CSV and JSONL are);
  - ``ingest_events_validated``: rows ``validate_row`` already checked (sealing and storing).
* open: values per second through ``Vault.open`` for a recorded plan naming every sealed field
  of every event record (database read, key unwrap, authentication, decoding).
* shred: latency per subject with 10 and with 10,000 records, interleaved.
* seal stage: ``DatasetLayout.seal`` alone (value encoding, AAD, AES-GCM, record layout,
  clear JSON), no database.

Baselines: a bare AES-256-GCM loop over the exact plaintexts the vault seals, as many of them,
in this process (one key, a fresh ``os.urandom(12)`` nonce per value, an 80-byte AAD), and for
open a bare decrypt loop over as many ciphertexts of those plaintexts. Each measurement runs
``--reps`` times with its baseline right before it (interleaved, so drift in machine load hits
both). Reported: ``ratio`` = best vault rate / best baseline rate, on wall time and, as
``cpu_ratio``, on this process's CPU time (threads included; for PostgreSQL the server's own
work is not in it, so that is the client's share only); ``paired_median`` = the median over
repetitions of the ratio of each run to its own baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.catalog import Classification, default_catalog, validate_row
from bastion.catalog.compiled import ValidBatch
from bastion.clock import SystemClock
from bastion.events import AccessDecision, Actor, encode_event
from bastion.keys import softhsm
from bastion.keys.local import LocalKeyring
from bastion.keys.provider import KeyProvider
from bastion.ledger.api import Receipt
from bastion.store import Database, open_database
from bastion.synth import Format, Platform, SynthSpec, generate
from bastion.vault import ReadPlan, RecordedPlan, Vault, codec, ingest_file
from bastion.vault.plan import leaf_hash
from bastion.vault.sealing import DatasetLayout

PG_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
AAD = b"a" * 80
OPERATOR = Actor(id="bench", kind="operator")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Rate:
    """Rates over repetitions, on wall-clock and on process CPU time (all threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, n: int, wall_s: float, cpu_s: float) -> None:
        self.wall.append(n / wall_s)
        self.cpu.append(n / max(cpu_s, 1e-9))


def measure(rate: Rate, n: int, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    rate.add(n, time.perf_counter() - wall, time.process_time() - cpu)
    return out


def ratios(vault: Rate, bare: Rate) -> dict[str, Any]:
    """Best against best, and the median of each run against the baseline run just before it."""
    paired = [v / b for v, b in zip(vault.wall, bare.wall, strict=True)]
    paired_cpu = [v / b for v, b in zip(vault.cpu, bare.cpu, strict=True)]
    return {
        "values_per_s": round(max(vault.wall)),
        "bare_per_s": round(max(bare.wall)),
        "ratio": round(max(vault.wall) / max(bare.wall), 3),
        "cpu_ratio": round(max(vault.cpu) / max(bare.cpu), 3),
        "paired_median": round(statistics.median(paired), 3),
        "paired_median_cpu": round(statistics.median(paired_cpu), 3),
        "reps": len(paired),
    }


def synth_rows(dataset: str, spec: SynthSpec) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for table in Platform(spec).chunks(dataset):
        rows.extend(table.to_pylist())
    return rows


def validated(dataset: str, rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    spec = default_catalog().dataset(dataset)
    return [
        (i, validate_row(spec, raw, file="bench", row_number=i)) for i, raw in enumerate(rows, 1)
    ]


def sealed_plaintexts(dataset: str, valid: list[tuple[int, dict[str, Any]]]) -> list[bytes]:
    """The exact plaintexts the vault seals for these rows."""
    spec = default_catalog().dataset(dataset)
    sealed = [f for f in spec.fields if f.classification is not Classification.PUBLIC]
    return [codec.encode_value(f.type, row[f.name]) for _, row in valid for f in sealed]


def bare_seal(rate: Rate, values: list[bytes]) -> None:
    aead = AESGCM(AESGCM.generate_key(256))

    def loop() -> None:
        for v in values:
            aead.encrypt(os.urandom(12), v, AAD)

    measure(rate, len(values), loop)


def bare_open(rate: Rate, sealed: list[tuple[bytes, bytes]], key: bytes) -> None:
    aead = AESGCM(key)

    def loop() -> None:
        for nonce, ct in sealed:
            aead.decrypt(nonce, ct, AAD)

    measure(rate, len(sealed), loop)


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[Database]:
    if backend == "sqlite":
        db = open_database(f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}")
        yield db
        db.close()
        return
    db = open_database(PG_URL, schema=f"bench_{uuid.uuid4().hex[:10]}")
    try:
        yield db
    finally:
        db.drop_schema()  # type: ignore[attr-defined]
        db.close()


def new_vault(db: Database, provider: KeyProvider) -> Vault:
    Vault.create_schema(db)
    vault = Vault(db, provider, default_catalog(), SystemClock())
    vault.ensure_identity()
    return vault


def keyring(workdir: Path) -> LocalKeyring:
    return LocalKeyring.create(workdir / f"keys-{uuid.uuid4().hex[:8]}")


def settle(db: Database) -> None:
    """Flush the write-ahead log so the next timings do not pay for the last bulk load."""
    if db.dialect == "sqlite":
        db.query("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with db.transaction() as cur:
        cur.execute("CHECKPOINT")


@dataclass
class Inputs:
    """One synthetic platform, in every form the benchmark feeds the vault."""

    raw_events: list[dict[str, Any]]
    users: list[tuple[int, dict[str, Any]]]
    events: list[tuple[int, dict[str, Any]]]
    files: dict[str, Path]
    plain: dict[str, list[bytes]]


def event_plan(vault: Vault, first_index: int) -> RecordedPlan:
    """Every sealed field of every event record, bound to allowing access decisions."""
    fields = [
        f.name
        for f in default_catalog().dataset("events").fields
        if f.classification is not Classification.PUBLIC
    ]
    records: list[str] = []
    while page := vault.list_records(
        "events", after=records[-1] if records else None, limit=10_000
    ):
        records += page
    plan = ReadPlan.of("events", [(r, f) for r in records for f in fields])
    make: Any = RecordedPlan
    if not hasattr(make, "bind_all"):  # the plan API before bound entries
        return make(plan, Receipt(first_index, b"\x00" * 32))  # type: ignore[no-any-return]
    # One bulk release, recorded compactly over consecutive entries (each under 64 KiB).
    entries: list[tuple[Receipt, bytes]] = []
    for i in range(0, len(records), 2000):
        entry = encode_event(
            AccessDecision(
                actor=OPERATOR,
                reason="bench",
                at="2026-01-01T00:00:00Z",
                request_id=f"bench-{first_index}",
                action="read",
                dataset="events",
                decision="allow",
                released_fields=dict.fromkeys(fields, "clear"),
                released_records=records[i : i + 2000],
            )
        )
        entries.append((Receipt(first_index + len(entries), leaf_hash(entry)), entry))
    return make.bind_all(plan, entries)  # type: ignore[no-any-return]


def bench_throughput(backend: str, workdir: Path, data: Inputs, reps: int) -> dict[str, Any]:
    names = (
        "ingest_users_file",
        "ingest_events_file",
        "ingest_events_rows",
        "ingest_events_validated",
        "open_events",
    )
    vault_rates = {name: Rate() for name in names}
    bare_rates = {name: Rate() for name in names}
    n_users, n_events = len(data.plain["users"]), len(data.plain["events"])
    counts: dict[str, int] = {}

    def timed(name: str, plain: list[bytes], run: Callable[[], Any]) -> Any:
        bare_seal(bare_rates[name], plain)
        return measure(vault_rates[name], len(plain), run)

    for rep in range(reps):
        with fresh_database(backend, workdir) as db:
            vault = new_vault(db, keyring(workdir))
            got = timed(
                "ingest_users_file",
                data.plain["users"],
                lambda v=vault: ingest_file(v, "users", data.files["users"]),  # type: ignore[misc]
            )
            counts["ingest_users_file"] = got.sealed_values
            got = timed(
                "ingest_events_file",
                data.plain["events"],
                lambda v=vault: ingest_file(v, "events", data.files["events"]),  # type: ignore[misc]
            )
            counts["ingest_events_file"] = got.sealed_values
            settle(db)
            plan = event_plan(vault, 1 + rep * 100)
            key = AESGCM.generate_key(256)
            aead = AESGCM(key)
            sealed = []
            for v in data.plain["events"][: len(plan.plan)]:
                nonce = os.urandom(12)
                sealed.append((nonce, aead.encrypt(nonce, v, AAD)))
            bare_open(bare_rates["open_events"], sealed, key)
            measure(vault_rates["open_events"], len(plan.plan), lambda v=vault, p=plan: v.open(p))  # type: ignore[misc]
            counts["open_events"] = len(plan.plan)
            vault.close()
        for name, run in (
            (
                "ingest_events_rows",
                lambda v: v.ingest_rows("events", enumerate(data.raw_events, 1)),
            ),
            ("ingest_events_validated", lambda v: v.ingest_validated("events", data.events)),
        ):
            with fresh_database(backend, workdir) as db:
                vault = new_vault(db, keyring(workdir))
                vault.ingest_validated("users", data.users)
                settle(db)
                got = timed(name, data.plain["events"], lambda r=run, v=vault: r(v))  # type: ignore[misc]
                counts[name] = got.sealed_values
                vault.close()
        log(f"  {backend} rep {rep + 1}/{reps} done")
    assert counts["ingest_users_file"] == n_users and counts["ingest_events_file"] == n_events
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {"values": counts[name], **ratios(vault_rates[name], bare_rates[name])}
        fig = out[name]
        log(
            f"  {backend} {name}: {fig['values_per_s']:,} values/s = {fig['ratio']:.2f}x bare "
            f"(cpu {fig['cpu_ratio']:.2f}x, paired median {fig['paired_median']:.2f}x)"
        )
    return out


def bench_seal_stage(rows: list[tuple[int, dict[str, Any]]], reps: int) -> dict[str, Any]:
    """The sealing step alone (no database): ``DatasetLayout.seal`` on resolved keys."""
    spec = default_catalog().dataset("events")
    layout = DatasetLayout.of(spec)
    batches = [
        ValidBatch.from_rows(rows[i : i + 2000], spec.field_names)
        for i in range(0, len(rows), 2000)
    ]
    tokens: dict[str, str] = {}
    for _, r in rows:
        tokens.setdefault(str(r["user_id"]), f"ps_{len(tokens):020d}")
        if r["device_id"] is not None:
            tokens.setdefault(str(r["device_id"]), f"ps_{len(tokens):020d}")
    keys = {t: (AESGCM(AESGCM.generate_key(256)), 1) for t in tokens.values()}
    subjects = [[tokens[str(s)] for s in b.columns["user_id"]] for b in batches]
    plain = sealed_plaintexts("events", rows)
    stage, bare = Rate(), Rate()

    def seal_all() -> None:
        for batch, subject_tokens in zip(batches, subjects, strict=True):
            layout.seal(batch, subject_tokens, tokens, keys, "bench")

    for _ in range(reps):
        bare_seal(bare, plain)
        measure(stage, len(plain), seal_all)
    out = ratios(stage, bare)
    log(
        f"  seal stage (events, no database): {out['values_per_s']:,} values/s = "
        f"{out['ratio']:.2f}x (cpu {out['cpu_ratio']:.2f}x)"
    )
    return out


def bench_shred(
    backend: str, workdir: Path, template: dict[str, Any], sizes: dict[int, int]
) -> dict[str, Any]:
    with fresh_database(backend, workdir) as db:
        vault = new_vault(db, keyring(workdir))
        subjects: dict[int, list[str]] = {}
        for size, count in sizes.items():
            subjects[size] = [f"shred-{size}-{i}" for i in range(count)]
            rows = [
                {**template, "event_id": f"{s}-{j}", "user_id": s, "device_id": f"d-{s}"}
                for s in subjects[size]
                for j in range(size)
            ]
            vault.ingest_rows("events", enumerate(rows, 1))
        settle(db)
        latencies: dict[int, list[float]] = {size: [] for size in sizes}
        for i in range(max(sizes.values())):  # interleaved, so drift hits both sizes alike
            for size in sizes:
                if i < len(subjects[size]):
                    started = time.perf_counter()
                    receipt = vault.shred(subjects[size][i], OPERATOR, "bench")
                    latencies[size].append((time.perf_counter() - started) * 1000)
                    assert receipt.records_affected == size
        vault.close()
    out: dict[str, Any] = {}
    for size, ms in latencies.items():
        out[f"records_{size}"] = {
            "subjects": len(ms),
            "median_ms": round(statistics.median(ms), 2),
            "min_ms": round(min(ms), 2),
            "max_ms": round(max(ms), 2),
        }
        log(f"  {backend} shred, {size} records: {statistics.median(ms):.2f} ms median")
    small, large = min(sizes), max(sizes)
    out["median_large_over_small"] = round(
        out[f"records_{large}"]["median_ms"] / out[f"records_{small}"]["median_ms"], 2
    )
    return out


def bench_hsm(workdir: Path, data: Inputs, reps: int) -> dict[str, Any]:
    """Ingest users through a SoftHSM2 token: each new subject costs in-token AES-GCM wraps."""
    from bastion.keys.pkcs11 import Pkcs11Provider

    softhsm.configure(workdir / "softhsm")
    vault_rate, bare = Rate(), Rate()
    for _ in range(reps):
        token = softhsm.make_token()
        provider = Pkcs11Provider.create(
            token.library, token.label, token.pin, workdir / f"hsm-{uuid.uuid4().hex[:6]}"
        )
        with fresh_database("sqlite", workdir) as db:
            vault = new_vault(db, provider)
            bare_seal(bare, data.plain["users"])
            measure(
                vault_rate,
                len(data.plain["users"]),
                lambda v=vault: ingest_file(v, "users", data.files["users"]),  # type: ignore[misc]
            )
        provider.close()
        softhsm.delete_token(token)
    out = {
        "ingest_users_file_sqlite": {"new_subjects": len(data.users), **ratios(vault_rate, bare)}
    }
    ratio = out["ingest_users_file_sqlite"]["ratio"]
    log(f"  pkcs11 ingest users: {max(vault_rate.wall):,.0f} values/s = {ratio:.2f}x bare")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shred-subjects", type=int, default=3, help="subjects per size")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-hsm", action="store_true")
    parser.add_argument("--no-shred", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    spec = SynthSpec(seed=7, users=args.users, videos=max(args.users // 5, 1), events=args.events)
    raw_users, raw_events = synth_rows("users", spec), synth_rows("events", spec)
    users, events = validated("users", raw_users), validated("events", raw_events)
    result: dict[str, Any] = {
        "benchmark": "vault",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "rows": {"users": len(users), "events": len(events)},
        "sealed_fields_per_row": {
            name: sum(
                1
                for f in default_catalog().dataset(name).fields
                if f.classification is not Classification.PUBLIC
            )
            for name in ("users", "events")
        },
        "reps": args.reps,
    }
    sizes = {10: max(args.shred_subjects, 5), 10_000: args.shred_subjects}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = generate(spec, workdir / "synth", Format.PARQUET, datasets=("users", "events"))
        data = Inputs(
            raw_events=raw_events,
            users=users,
            events=events,
            files=dict(files.files),
            plain={
                "users": sealed_plaintexts("users", users),
                "events": sealed_plaintexts("events", events),
            },
        )
        result["seal_stage_events"] = bench_seal_stage(events, args.reps)
        for backend in args.backends.split(","):
            log(f"{backend}:")
            result[backend] = bench_throughput(backend, workdir, data, args.reps)
            if not args.no_shred:
                result[backend]["shred"] = bench_shred(backend, workdir, raw_events[0], sizes)
        if not args.no_hsm and softhsm.available():
            log("pkcs11 (SoftHSM2):")
            result["pkcs11"] = bench_hsm(workdir, data, min(args.reps, 3))
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
