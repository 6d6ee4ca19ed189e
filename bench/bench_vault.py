"""Vault benchmark: sealing on ingest, opening, and shred latency, as ratios to same-run baselines.

    .venv/bin/python bench/bench_vault.py [--events 40000] [--users 2000] [--out FILE]

Figures (JSON on stdout, progress on stderr), on SQLite and on PostgreSQL:

* ingest: sealed values per second through ``Vault.ingest_rows`` (validation, pseudonyms,
  key handling, sealing and the database writes, committed), and as a ratio to a bare
  AES-256-GCM loop over the same plaintexts in the same run (one key, a fresh
  ``os.urandom(12)`` nonce per value, a fixed 80-byte AAD). Also end to end from a Parquet
  file (``ingest_file``: reading, validation, sealing, storing).
* open: values per second through ``Vault.open`` for a recorded plan naming every sealed
  field of N event records (database read, key unwrap, authentication, decoding), as a ratio
  to a bare AES-256-GCM decrypt loop over the same number of ciphertexts.
* shred: latency per subject for subjects with 10 and with 10,000 records.

Baselines are taken several times around the measurement and the *fastest* is used, so the
ratios are conservative on a noisy machine. Timing never appears in tests, only here.
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
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.catalog import Classification, default_catalog, validate_row
from bastion.clock import SystemClock
from bastion.events import Actor
from bastion.keys import softhsm
from bastion.keys.local import LocalKeyring
from bastion.keys.provider import KeyProvider
from bastion.ledger.api import Receipt
from bastion.store import Database, open_database
from bastion.synth import Format, Platform, SynthSpec, generate
from bastion.vault import ReadPlan, RecordedPlan, Vault, codec, ingest_file

PG_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
AAD = b"a" * 80
OPERATOR = Actor(id="bench", kind="operator")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synth_rows(dataset: str, spec: SynthSpec) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for table in Platform(spec).chunks(dataset):
        rows.extend(table.to_pylist())
    return rows


def sealed_plaintexts(dataset: str, rows: list[dict[str, Any]]) -> list[bytes]:
    """The exact plaintexts the vault seals for these rows (validated, then encoded)."""
    spec = default_catalog().dataset(dataset)
    sealed = [f for f in spec.fields if f.classification is not Classification.PUBLIC]
    out: list[bytes] = []
    for i, raw in enumerate(rows, start=1):
        row = validate_row(spec, raw, file="bench", row_number=i)
        out.extend(codec.encode_value(f.type, row[f.name]) for f in sealed)
    return out


def bare_seal(values: list[bytes]) -> tuple[float, list[tuple[bytes, bytes]]]:
    aead = AESGCM(AESGCM.generate_key(256))
    out = []
    started = time.perf_counter()
    for v in values:
        nonce = os.urandom(12)
        out.append((nonce, aead.encrypt(nonce, v, AAD)))
    rate = len(values) / (time.perf_counter() - started)
    return rate, [(n, c) for n, c in out]


def bare_open(key: bytes, sealed: list[tuple[bytes, bytes]]) -> float:
    aead = AESGCM(key)
    started = time.perf_counter()
    for nonce, ct in sealed:
        aead.decrypt(nonce, ct, AAD)
    return len(sealed) / (time.perf_counter() - started)


def best_bare_seal(values: list[bytes], runs: int = 3) -> float:
    return max(bare_seal(values)[0] for _ in range(runs))


def best_bare_open(values: list[bytes], runs: int = 3) -> float:
    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    sealed = []
    for v in values:
        nonce = os.urandom(12)
        sealed.append((nonce, aead.encrypt(nonce, v, AAD)))
    return max(bare_open(key, sealed) for _ in range(runs))


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[Database]:
    if backend == "sqlite":
        db = open_database(f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}")
        yield db
        db.close()
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    db = open_database(PG_URL, schema=schema)
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


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def bench_backend(
    backend: str,
    workdir: Path,
    users: list[dict[str, Any]],
    events: list[dict[str, Any]],
    events_file: Path,
    shred_sizes: dict[int, int],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    user_values = sealed_plaintexts("users", users)
    event_values = sealed_plaintexts("events", events)
    with fresh_database(backend, workdir) as db:
        keyring = LocalKeyring.create(workdir / f"keys-{backend}-{uuid.uuid4().hex[:6]}")
        vault = new_vault(db, keyring)
        catalog = default_catalog()
        for name, rows, values in (
            ("users", users, user_values),
            ("events", events, event_values),
        ):
            spec = catalog.dataset(name)
            base_before = best_bare_seal(values)
            validation_s, valid = timed(
                lambda r=rows, sp=spec: [
                    (i, validate_row(sp, raw, file="bench", row_number=i))
                    for i, raw in enumerate(r, 1)
                ]
            )
            seconds, result = timed(lambda n=name, v=valid: vault.ingest_validated(n, v))
            base = max(base_before, best_bare_seal(values))
            rate = result.sealed_values / seconds
            full = result.sealed_values / (seconds + validation_s)
            out[f"ingest_{name}"] = {
                "rows": result.rows,
                "sealed_values": result.sealed_values,
                "bare_aes_gcm_per_s": round(base),
                "seal_and_store_seconds": round(seconds, 3),
                "seal_and_store_values_per_s": round(rate),
                "seal_and_store_ratio": round(rate / base, 3),
                "validation_seconds": round(validation_s, 3),
                "with_validation_values_per_s": round(full),
                "with_validation_ratio": round(full / base, 3),
            }
            log(
                f"  {backend} ingest {name}: seal+store {rate:,.0f} values/s = "
                f"{rate / base:.2f}x bare; with validation {full / base:.2f}x"
            )
        # Open: every sealed field of up to 20,000 event records.
        layout_fields = [
            f.name
            for f in default_catalog().dataset("events").fields
            if f.classification is not Classification.PUBLIC
        ]
        records = vault.list_records("events", limit=10_000)
        records += vault.list_records("events", after=records[-1], limit=10_000)
        plan = RecordedPlan(
            ReadPlan.of("events", [(r, f) for r in records for f in layout_fields]),
            Receipt(1, b"\x00" * 32),
        )
        open_values = event_values[: len(plan.plan)]
        base_before = best_bare_open(open_values)
        seconds, opened = timed(lambda: vault.open(plan))
        base = max(base_before, best_bare_open(open_values))
        rate = len(opened) / seconds
        out["open_events"] = {
            "records": len(records),
            "values": len(opened),
            "seconds": round(seconds, 3),
            "values_per_s": round(rate),
            "bare_aes_gcm_decrypt_per_s": round(base),
            "ratio_to_bare_loop": round(rate / base, 3),
        }
        log(f"  {backend} open: {rate:,.0f} values/s = {rate / base:.2f}x bare")
        vault.close()
    # End to end from a Parquet file, into a fresh database.
    with fresh_database(backend, workdir) as db:
        keyring = LocalKeyring.create(workdir / f"keys-{backend}-{uuid.uuid4().hex[:6]}")
        vault = new_vault(db, keyring)
        vault.ingest_rows("users", list(enumerate(users, 1)))
        seconds, result = timed(lambda: ingest_file(vault, "events", events_file))
        base = best_bare_seal(event_values)
        rate = result.sealed_values / seconds
        out["ingest_events_parquet_file"] = {
            "rows": result.rows,
            "seconds": round(seconds, 3),
            "sealed_values_per_s": round(rate),
            "ratio_to_bare_loop": round(rate / base, 3),
        }
        log(f"  {backend} parquet file: {rate:,.0f} values/s = {rate / base:.2f}x bare")
        vault.close()
    # Shred latency: subjects with 10 and with 10,000 records each.
    with fresh_database(backend, workdir) as db:
        keyring = LocalKeyring.create(workdir / f"keys-{backend}-{uuid.uuid4().hex[:6]}")
        vault = new_vault(db, keyring)
        template = events[0]
        shred: dict[str, Any] = {}
        for size in shred_sizes:
            subjects = [f"shred-{size}-{i}" for i in range(shred_sizes[size])]
            rows = []
            for s in subjects:
                for j in range(size):
                    rows.append(
                        {**template, "event_id": f"{s}-{j}", "user_id": s, "device_id": f"d-{s}"}
                    )
            vault.ingest_rows("events", list(enumerate(rows, 1)))
            latencies = []
            for s in subjects:
                seconds, receipt = timed(lambda s=s: vault.shred(s, OPERATOR, "bench"))
                assert receipt.records_affected == size
                latencies.append(seconds * 1000)
            shred[f"records_{size}"] = {
                "subjects": len(subjects),
                "median_ms": round(statistics.median(latencies), 3),
                "min_ms": round(min(latencies), 3),
                "max_ms": round(max(latencies), 3),
            }
            log(f"  {backend} shred, {size} records: {statistics.median(latencies):.2f} ms median")
        small, large = (
            shred[f"records_{n}"]["median_ms"] for n in (min(shred_sizes), max(shred_sizes))
        )
        shred["large_over_small"] = round(large / small, 2)
        out["shred"] = shred
        vault.close()
    return out


def bench_hsm(workdir: Path, users: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingest through a SoftHSM2 token: every new subject costs in-token wraps."""
    softhsm.configure(workdir / "softhsm")
    token = softhsm.make_token()
    from bastion.keys.pkcs11 import Pkcs11Provider

    provider = Pkcs11Provider.create(token.library, token.label, token.pin, workdir / "hsm-keys")
    values = sealed_plaintexts("users", users)
    with fresh_database("sqlite", workdir) as db:
        vault = new_vault(db, provider)
        seconds, result = timed(lambda: vault.ingest_rows("users", list(enumerate(users, 1))))
        base = best_bare_seal(values)
        rate = result.sealed_values / seconds
        subjects_per_s = result.new_subjects / seconds
        log(f"  pkcs11 ingest users: {rate:,.0f} values/s = {rate / base:.2f}x bare")
    provider.close()
    softhsm.delete_token(token)
    return {
        "ingest_users_sqlite": {
            "rows": result.rows,
            "new_subjects_per_s": round(subjects_per_s),
            "sealed_values_per_s": round(rate),
            "ratio_to_bare_loop": round(rate / base, 3),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--shred-subjects", type=int, default=3, help="subjects with 10k records")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-hsm", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    spec = SynthSpec(seed=7, users=args.users, videos=max(args.users // 5, 1), events=args.events)
    users = synth_rows("users", spec)
    events = synth_rows("events", spec)
    result: dict[str, Any] = {
        "benchmark": "vault",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "rows": {"users": len(users), "events": len(events)},
        "sealed_fields_per_row": {
            name: sum(
                1
                for f in default_catalog().dataset(name).fields
                if f.classification is not Classification.PUBLIC
            )
            for name in ("users", "events")
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = generate(spec, workdir / "synth", Format.PARQUET, datasets=("events",))
        for backend in args.backends.split(","):
            log(f"{backend}:")
            result[backend] = bench_backend(
                backend,
                workdir,
                users,
                events,
                files.files["events"],
                {10: 10, 10_000: args.shred_subjects},
            )
        if not args.no_hsm and softhsm.available():
            log("pkcs11 (SoftHSM2):")
            result["pkcs11"] = bench_hsm(workdir, users[:1000])
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
