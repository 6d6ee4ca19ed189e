"""Where egress keeps its state: loaded flow versions, each flow's cursor, and its runs.

Three tables, typed rows, no SQL outside this module:

* ``egress_flows``: every version of every flow ever loaded, with the declaration exactly as
  loaded, its digest, who loaded it, why, and the ledger index of its ``egress.flow`` entry;
* ``egress_state``: per flow, the version in force, the change-feed cursor its deliveries
  reached, the last run number and manifest id, and when it is next due;
* ``egress_runs``: one row per recorded manifest: its cursor range, counts, where its
  encrypted payload is spooled, and whether it was delivered.

A run's row and the cursor move are written by the side write of the ``egress.manifest``
append (``record_run_in``): the manifest is in the log exactly when the run is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bastion.egress.model import Flow, flow_from_declaration
from bastion.store import Cursor, Database

EGRESS_DDL = [
    """CREATE TABLE IF NOT EXISTS egress_flows (
        name TEXT NOT NULL,
        version {int} NOT NULL,
        sha256 TEXT NOT NULL,
        declaration TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        loaded_at TEXT NOT NULL,
        ledger_index {int} NOT NULL,
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS egress_state (
        name TEXT PRIMARY KEY,
        version {int} NOT NULL,
        status TEXT NOT NULL,
        cursor {int} NOT NULL,
        run {int} NOT NULL,
        last_manifest TEXT,
        next_due TEXT)""",
    """CREATE TABLE IF NOT EXISTS egress_runs (
        manifest_id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        version {int} NOT NULL,
        run {int} NOT NULL,
        cursor_after {int} NOT NULL,
        cursor_through {int} NOT NULL,
        rows_out {int} NOT NULL,
        tombstones {int} NOT NULL,
        chunks {int} NOT NULL,
        spool TEXT NOT NULL,
        ledger_index {int} NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        UNIQUE (flow, run))""",
    """CREATE TABLE IF NOT EXISTS egress_budget (
        name TEXT PRIMARY KEY,
        spent DOUBLE PRECISION NOT NULL)""",
]


@dataclass(frozen=True)
class StoredFlow:
    flow: Flow
    sha256: str
    actor_id: str
    reason: str
    loaded_at: str
    ledger_index: int


@dataclass(frozen=True)
class FlowState:
    name: str
    version: int
    status: str  # active | retired
    cursor: int
    run: int
    last_manifest: str | None
    next_due: str | None


@dataclass(frozen=True)
class RunRow:
    manifest_id: str
    flow: str
    version: int
    run: int
    cursor_after: int
    cursor_through: int
    rows: int
    tombstones: int
    chunks: int
    spool: str
    ledger_index: int
    created_at: str
    delivered_at: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EgressStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("egress", EGRESS_DDL)

    # ------------------------------------------------------------------ flows

    def add_version(
        self, cur: Cursor, flow: Flow, *, actor_id: str, reason: str, at: str, ledger_index: int
    ) -> None:
        """Store a loaded version and make it the one in force (a side write of its entry).
        A new flow starts at cursor 0; a new version of a flow keeps its cursor and runs."""
        cur.execute(
            "INSERT INTO egress_flows (name, version, sha256, declaration, actor_id, reason, "
            "loaded_at, ledger_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                flow.name,
                flow.version,
                flow.sha256(),
                json.dumps(flow.declaration(), sort_keys=True),
                actor_id,
                reason,
                at,
                ledger_index,
            ),
        )
        cur.execute(
            "INSERT INTO egress_state (name, version, status, cursor, run, last_manifest, "
            "next_due) VALUES (?, ?, 'active', 0, 0, NULL, NULL) ON CONFLICT (name) DO UPDATE "
            "SET version = EXCLUDED.version, status = 'active'",
            (flow.name, flow.version),
        )

    def set_index(self, name: str, version: int, ledger_index: int) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE egress_flows SET ledger_index = ? WHERE name = ? AND version = ?",
                (ledger_index, name, version),
            )

    def retire_in(self, cur: Cursor, name: str) -> None:
        cur.execute("UPDATE egress_state SET status = 'retired' WHERE name = ?", (name,))

    def stored(self, name: str, version: int | None = None) -> StoredFlow | None:
        """A loaded version (the one in force when ``version`` is None)."""
        if version is None:
            state = self.state(name)
            if state is None:
                return None
            version = state.version
        rows = self.db.query(
            "SELECT declaration, sha256, actor_id, reason, loaded_at, ledger_index "
            "FROM egress_flows WHERE name = ? AND version = ?",
            (name, version),
        )
        if not rows:
            return None
        declaration, sha, actor, reason, at, index = rows[0]
        flow = flow_from_declaration(json.loads(str(declaration)), source=f"stored flow {name}")
        return StoredFlow(flow, str(sha), str(actor), str(reason), str(at), int(index))

    def latest_version(self, name: str) -> int:
        rows = self.db.query("SELECT MAX(version) FROM egress_flows WHERE name = ?", (name,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def state(self, name: str) -> FlowState | None:
        rows = self.db.query(
            "SELECT name, version, status, cursor, run, last_manifest, next_due "
            "FROM egress_state WHERE name = ?",
            (name,),
        )
        return _state(rows[0]) if rows else None

    def states(self) -> list[FlowState]:
        rows = self.db.query(
            "SELECT name, version, status, cursor, run, last_manifest, next_due "
            "FROM egress_state ORDER BY name"
        )
        return [_state(r) for r in rows]

    def set_next_due(self, name: str, at: str) -> None:
        with self.db.transaction() as cur:
            cur.execute("UPDATE egress_state SET next_due = ? WHERE name = ?", (at, name))

    # ------------------------------------------------------------------ runs

    def record_run_in(self, cur: Cursor, run: RunRow) -> None:
        """The run's row and the flow's new cursor, in the manifest entry's own commit. The
        compare on the old cursor and run number makes two concurrent runs of one flow
        impossible to both record: the second one's side write fails, and so its entry."""
        moved = cur.execute(
            "UPDATE egress_state SET cursor = ?, run = ?, last_manifest = ? "
            "WHERE name = ? AND cursor = ? AND run = ?",
            (
                run.cursor_through,
                run.run,
                run.manifest_id,
                run.flow,
                run.cursor_after,
                run.run - 1,
            ),
        ).rowcount
        if moved != 1:
            raise RunConflict(f"flow {run.flow!r} moved on while this run was built; run it again")
        cur.execute(
            "INSERT INTO egress_runs (manifest_id, flow, version, run, cursor_after, "
            "cursor_through, rows_out, tombstones, chunks, spool, ledger_index, created_at, "
            "delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                run.manifest_id,
                run.flow,
                run.version,
                run.run,
                run.cursor_after,
                run.cursor_through,
                run.rows,
                run.tombstones,
                run.chunks,
                run.spool,
                run.ledger_index,
                run.created_at,
            ),
        )

    def set_run_index(self, manifest_id: str, ledger_index: int) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE egress_runs SET ledger_index = ? WHERE manifest_id = ?",
                (ledger_index, manifest_id),
            )

    def mark_delivered(self, manifest_id: str, at: str) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE egress_runs SET delivered_at = ? WHERE manifest_id = ? "
                "AND delivered_at IS NULL",
                (at, manifest_id),
            )

    def undelivered(self, flow: str) -> list[RunRow]:
        """Recorded runs not yet delivered, oldest first: delivered before any new run."""
        return self._runs("WHERE flow = ? AND delivered_at IS NULL ORDER BY run", (flow,))

    def runs(self, flow: str, limit: int = 50) -> list[RunRow]:
        return self._runs("WHERE flow = ? ORDER BY run DESC LIMIT ?", (flow, limit))

    def _runs(self, where: str, params: tuple[Any, ...]) -> list[RunRow]:
        rows = self.db.query(
            "SELECT manifest_id, flow, version, run, cursor_after, cursor_through, rows_out, "
            "tombstones, chunks, spool, ledger_index, created_at, delivered_at FROM egress_runs "
            + where,
            params,
        )
        return [
            RunRow(
                str(r[0]),
                str(r[1]),
                int(r[2]),
                int(r[3]),
                int(r[4]),
                int(r[5]),
                int(r[6]),
                int(r[7]),
                int(r[8]),
                str(r[9]),
                int(r[10]),
                str(r[11]),
                None if r[12] is None else str(r[12]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ budgets

    def spent(self, name: str) -> float:
        rows = self.db.query("SELECT spent FROM egress_budget WHERE name = ?", (name,))
        return float(rows[0][0]) if rows else 0.0

    def charge_in(self, cur: Cursor, name: str, epsilon: float, budget: float) -> float:
        """Spend ``epsilon`` of the flow's own budget in the caller's transaction, or raise
        BudgetExhausted and spend nothing."""
        row = cur.execute("SELECT spent FROM egress_budget WHERE name = ?", (name,)).fetchone()
        spent = float(row[0]) if row else 0.0
        if spent + epsilon > budget + 1e-12:
            raise BudgetExhausted(
                f"flow {name!r} has spent {spent:g} of its epsilon budget {budget:g}; a run "
                f"costs {epsilon:g}"
            )
        cur.execute(
            "INSERT INTO egress_budget (name, spent) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET spent = EXCLUDED.spent",
            (name, spent + epsilon),
        )
        return spent + epsilon


def _state(r: Any) -> FlowState:
    return FlowState(
        str(r[0]),
        int(r[1]),
        str(r[2]),
        int(r[3]),
        int(r[4]),
        None if r[5] is None else str(r[5]),
        None if r[6] is None else str(r[6]),
    )


class RunConflict(RuntimeError):
    pass


class BudgetExhausted(RuntimeError):
    pass
