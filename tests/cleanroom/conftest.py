"""Shared fixtures: a small synthetic platform, engines, an in-memory ledger."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from bastion.cleanroom import CleanRoom, DuckDBEngine
from bastion.clock import FixedClock
from bastion.events import decode_event, encode_event
from bastion.ledger.api import Receipt
from bastion.store import Database
from bastion.synth import SynthSpec, generate

SMALL = SynthSpec(seed=21, users=1_500, videos=200, events=40_000, campaigns=30)


class MemoryLedger:
    """A LedgerWriter that keeps entries in memory; ``fail`` makes every append raise."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.fail = False
        self._lock = threading.Lock()

    def append(self, event: BaseModel) -> Receipt:
        from bastion.errors import LedgerUnavailable

        if self.fail:
            raise LedgerUnavailable("ledger down (test)")
        data = encode_event(event)  # type: ignore[arg-type]
        with self._lock:
            self.entries.append(data)
            index = len(self.entries) - 1
        return Receipt(index, hashlib.sha256(b"\x00" + data).digest())

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        return [self.append(e) for e in events]

    def events(self) -> list[object]:
        return [decode_event(e) for e in self.entries]


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
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def room(db: Database, ledger: MemoryLedger, clock: FixedClock, duck: DuckDBEngine) -> CleanRoom:
    return CleanRoom(db, ledger, clock, duck)
