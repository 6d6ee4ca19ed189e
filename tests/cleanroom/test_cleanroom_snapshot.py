"""The clean room reads a snapshot built from the vault: shreds and deletes leave it within the
bound, a stale or missing snapshot is refused, and only the recorded fields are opened."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from snapshot_support import ANALYST, PARTNER, builder, event, ingest_events, make_vault, open_room

from bastion.cleanroom import CleanRoom
from bastion.cleanroom.snapshot import MANIFEST, RECORD_KEY, SnapshotUnavailable, read_manifest
from bastion.cleanroom.snapshot_engine import SnapshotRefresher
from bastion.clock import FixedClock
from bastion.events import Actor, CleanroomSnapshot, decode_event
from bastion.ledger.log import Log
from bastion.store import Database
from bastion.vault import Vault
from bastion.vault.changes import change_row, record_changes
from bastion.vault.schema import VAULT_LOCK

OPERATOR = Actor(id="ops", kind="operator")


@pytest.fixture
def vault(db: Database, clock: FixedClock, tmp_path: Path) -> Vault:
    v = make_vault(db, tmp_path / "keys", clock)
    # Three users with 10, 10 and 5 events.
    rows = [event(n, 1 + n // 10) for n in range(25)]
    ingest_events(v, rows)
    return v


def counts(room: CleanRoom) -> tuple[int, int]:
    """(users, rows) of the engine's bounded aggregate for a plain count: exact, before noise
    (the release layer's input, so what the count of a query is made of)."""
    assert callable(getattr(room.engine, "open", None))
    room.engine.open()  # type: ignore[attr-defined]
    plan = room.plan({"template": "count", "epsilon": 1, "max_rows_per_group": 100})
    agg = room.engine.aggregate(plan, "0" * 32).groups[()]
    return agg.users, agg.rows_w // plan.row_weight


def snapshot_events(ledger: Log) -> list[CleanroomSnapshot]:
    entries = [decode_event(ledger.entry(i)) for i in range(ledger.size())]
    return [e for e in entries if isinstance(e, CleanroomSnapshot)]


def test_a_shredded_subjects_events_stop_counting_after_the_refresh(
    db: Database, ledger: Log, clock: FixedClock, vault: Vault, tmp_path: Path
) -> None:
    data = tmp_path / "cleanroom"
    room = open_room(db, ledger, clock, data, max_age_s=60)
    snap = builder(vault, ledger, clock, data)
    first = snap.refresh()
    assert first.mode == "full" and first.opened == 25 and first.manifest.records == 25
    assert counts(room) == (3, 25)

    vault.shred("u00002", OPERATOR, "erasure request")
    assert counts(room) == (3, 25), "until the refresh, the snapshot is what it was"
    clock.advance(timedelta(seconds=30))
    second = snap.refresh()
    assert second.mode == "incremental" and second.removed == 10 and second.opened == 0
    assert counts(room) == (2, 15)
    # The released answer is made from those aggregates, and answers at all.
    result = room.run_query({"template": "count", "epsilon": 1}, analyst=ANALYST,
                            organization=PARTNER)  # fmt: skip
    assert result.keys_released == 1

    full, incremental = snapshot_events(ledger)
    assert (full.mode, full.after_seq, full.records) == ("full", 0, 25)
    assert (incremental.after_seq, incremental.through_seq) == (full.through_seq, 35)
    assert incremental.removed == 10 and incremental.records == 0
    # Nothing new: only the snapshot's as_of moves, nothing is recorded or opened.
    clock.advance(timedelta(seconds=30))
    assert snap.refresh().mode == "current"
    assert len(snapshot_events(ledger)) == 2


def test_a_deleted_record_and_new_events_reach_the_snapshot(
    db: Database, ledger: Log, clock: FixedClock, vault: Vault, tmp_path: Path
) -> None:
    data = tmp_path / "cleanroom"
    room = open_room(db, ledger, clock, data)
    snap = builder(vault, ledger, clock, data)
    snap.refresh()
    # A record delete as every writer makes one: the row and its change, under the lock.
    with db.transaction(lock=VAULT_LOCK) as cur:
        cur.execute("DELETE FROM vault_records WHERE dataset = 'events' AND record_key = ?",
                    ("e00000003",))  # fmt: skip
        record_changes(db, cur, [change_row("events", "e00000003", 2, "delete", [], "t")])
    ingest_events(vault, [event(100 + n, 9) for n in range(4)])
    result = snap.refresh()
    assert (result.mode, result.opened, result.removed) == ("incremental", 4, 5)
    assert counts(room) == (4, 28)
    keys = set(pq.read_table(data / result.manifest.file).column(RECORD_KEY).to_pylist())
    assert "e00000003" not in keys and "e00000100" in keys and len(keys) == 28


def test_the_snapshot_holds_only_the_clean_rooms_fields_and_tokens(
    db: Database, ledger: Log, clock: FixedClock, vault: Vault, tmp_path: Path
) -> None:
    data = tmp_path / "cleanroom"
    manifest = builder(vault, ledger, clock, data).refresh().manifest
    table = pq.read_table(data / manifest.file)
    assert set(table.column_names) == {RECORD_KEY, *manifest.fields}
    assert set(manifest.fields) == {
        "user_id", "event_type", "age_band", "region", "day", "campaign_id",
        "watch_time_s", "revenue_usd",
    }  # fmt: skip
    users = set(table.column("user_id").to_pylist())
    assert len(users) == 3 and not users & {"u00000", "u00001", "u00002"}, "tokens, not ids"
    assert vault.pseudonym_of("u00001") in users
    watch = sorted(table.column("watch_time_s").to_pylist())
    assert watch[0] == 12.5 and str(table.schema.field("day").type) == "date32[day]"


def test_no_snapshot_or_a_stale_one_is_refused_before_any_charge(
    db: Database, ledger: Log, clock: FixedClock, vault: Vault, tmp_path: Path
) -> None:
    data = tmp_path / "cleanroom"
    room = open_room(db, ledger, clock, data, max_age_s=120)
    query = {"template": "count", "epsilon": 1}
    with pytest.raises(SnapshotUnavailable, match="no snapshot"):
        room.run_query(query, analyst=ANALYST, organization=PARTNER)
    refresher = SnapshotRefresher(builder(vault, ledger, clock, data), clock, 30)
    assert refresher.tick() is not None
    assert refresher.tick() is None, "not due yet"
    room.run_query(query, analyst=ANALYST, organization=PARTNER)

    clock.advance(timedelta(seconds=121))  # the refresher stopped: the snapshot ages out
    with pytest.raises(SnapshotUnavailable, match="121 s old") as refused:
        room.run_query(query, analyst=ANALYST, organization=PARTNER)
    assert refused.value.exit_code == 10
    budget = room.budgets.get("analyst", ANALYST)
    assert budget is not None and budget.queries == 1, "the refusals charged nothing"
    assert refresher.tick() is not None  # due again: the snapshot is current once more
    room.run_query(query, analyst=ANALYST, organization=PARTNER)


def test_a_torn_or_altered_snapshot_file_is_never_served(
    db: Database, ledger: Log, clock: FixedClock, vault: Vault, tmp_path: Path
) -> None:
    data = tmp_path / "cleanroom"
    snap = builder(vault, ledger, clock, data)
    manifest = snap.refresh().manifest
    path = data / manifest.file
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # as a torn write would leave it
    room = open_room(db, ledger, clock, data)
    with pytest.raises(SnapshotUnavailable, match="does not match"):
        room.engine.open()  # type: ignore[attr-defined]
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # same size, one bit changed
    with pytest.raises(SnapshotUnavailable, match="does not match"):
        room.engine.open()  # type: ignore[attr-defined]
    (data / MANIFEST).write_text("{not json")
    with pytest.raises(SnapshotUnavailable, match="unreadable"):
        room.engine.open()  # type: ignore[attr-defined]
    # The builder rebuilds from the feed; the new snapshot serves.
    rebuilt = snap.refresh()
    assert rebuilt.mode == "full" and read_manifest(data) == rebuilt.manifest
    assert counts(room) == (3, 25)
