"""Shared fixtures: a small synthetic platform, engines, the real transparency log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.cleanroom import CleanRoom, DuckDBEngine
from bastion.clock import FixedClock
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Database
from bastion.synth import SynthSpec, generate

SMALL = SynthSpec(seed=21, users=1_500, videos=200, events=40_000, campaigns=30)


@pytest.fixture(scope="session")
def platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cleanroom-platform")
    generate(SMALL, out, "parquet")
    return out


@pytest.fixture(scope="session")
def duck(platform_dir: Path) -> Iterator[DuckDBEngine]:
    engine = DuckDBEngine(platform_dir, threads=2)
    yield engine
    engine.close()


@pytest.fixture
def ledger(db: Database, clock: FixedClock) -> Iterator[Log]:
    """The real transparency log on the test database (no background publisher)."""
    storage.create_tables(db)
    log = Log(db, NoteSigner.generate("bastion.test/log"), clock, background=False)
    yield log
    log.close()


@pytest.fixture
def room(db: Database, ledger: Log, clock: FixedClock, duck: DuckDBEngine) -> CleanRoom:
    return CleanRoom(db, ledger, clock, duck)
