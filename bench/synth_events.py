"""Shared by the benches that read events back out of a vault (``bench_snapshot``,
``bench_egress``): the synthetic events, generated once as Parquet, and their ingest.

Not a bench itself (the Makefile runs ``bench_*.py``)."""

from __future__ import annotations

import time
from pathlib import Path

from bastion.synth import SynthSpec, generate
from bastion.vault import Vault, ingest_file

SEED = 11
INGEST_BATCH = 5000


def users_for(rows: int) -> int:
    """Twenty events per user, as the platform's synthetic data has them (at least 1,000)."""
    return max(1_000, rows // 20)


def synth_events(root: Path, rows: int, *, users: int | None = None) -> Path:
    """Generate ``rows`` events (seeded, so every run and bench gets the same ones) under
    ``root``; the path of ``events.parquet``."""
    users = users if users is not None else users_for(rows)
    spec = SynthSpec(seed=SEED, users=users, videos=max(100, users // 10), events=rows)
    generate(spec, root, "parquet")
    return root / "events.parquet"


def ingest_events(vault: Vault, source: Path) -> float:
    """Ingest the generated events into ``vault`` as ``bastion ingest`` does; seconds taken."""
    started = time.perf_counter()
    ingest_file(vault, "events", source, batch_size=INGEST_BATCH)
    return time.perf_counter() - started
