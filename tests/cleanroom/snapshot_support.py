"""Clean-room snapshot test support: a vault with events, a builder, a clean room on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoom
from bastion.cleanroom.snapshot import SnapshotBuilder
from bastion.cleanroom.snapshot_engine import SnapshotEngine
from bastion.clock import FixedClock
from bastion.demo.platform import sample_event
from bastion.keys.local import LocalKeyring
from bastion.ledger.api import LedgerWriter
from bastion.store import Database
from bastion.vault import Vault

PARTNER = "partner"
ANALYST = "ana@partner"


def make_vault(db: Database, keys_dir: Path, clock: FixedClock) -> Vault:
    Vault.create_schema(db)
    vault = Vault(db, LocalKeyring.create(keys_dir), default_catalog(), clock)
    vault.ensure_identity()
    return vault


def event(n: int, user_n: int, **over: Any) -> dict[str, Any]:
    row = sample_event(n, user_n)
    row.update(over)
    return row


def ingest_events(vault: Vault, rows: list[dict[str, Any]]) -> None:
    vault.ingest_rows("events", list(enumerate(rows, start=1)), source="test")


def open_room(
    db: Database, ledger: LedgerWriter, clock: FixedClock, data_dir: Path, max_age_s: float = 60
) -> CleanRoom:
    engine = SnapshotEngine("duckdb", data_dir, clock, max_age_s=max_age_s)
    room = CleanRoom(db, ledger, clock, engine)
    from bastion.events import Actor

    admin = Actor(id="dpo", kind="operator")
    for scope, who in (("analyst", ANALYST), ("organization", PARTNER)):
        room.set_budget(scope, who, epsilon=1000, delta=1e-3, admin=admin, reason="tests")
    return room


def builder(vault: Vault, ledger: LedgerWriter, clock: FixedClock, data_dir: Path) -> Any:
    return SnapshotBuilder(vault, ledger, clock, data_dir)
