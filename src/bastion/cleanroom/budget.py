"""Privacy budgets per analyst and per organization, persisted in the store.

Amounts are stored as integers (epsilon in units of 1e-9, delta in units of 1e-18), so spending
never drifts through floating-point rounding; spends round up and limits round down.

Spending is one transaction under the ``cleanroom:budget`` lock (SQLite's single writer,
a PostgreSQL advisory lock), and each UPDATE re-checks the limit in its WHERE clause, so
concurrent queries, from threads or from several gateway processes, can never overspend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bastion.errors import InputError
from bastion.store import Cursor, Database

Scope = Literal["analyst", "organization"]
SCOPES: tuple[Scope, ...] = ("analyst", "organization")
EPS_UNIT = 10**9
DELTA_UNIT = 10**18
MAX_EPSILON_LIMIT = 1_000.0
MAX_DELTA_LIMIT = 1e-3
LOCK = "cleanroom:budget"

DDL = [
    """CREATE TABLE IF NOT EXISTS cleanroom_budget (
        scope TEXT NOT NULL,
        principal TEXT NOT NULL,
        epsilon_limit {int} NOT NULL,
        delta_limit {int} NOT NULL,
        epsilon_spent {int} NOT NULL DEFAULT 0,
        delta_spent {int} NOT NULL DEFAULT 0,
        queries {int} NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (scope, principal)
    )""",
    """CREATE TABLE IF NOT EXISTS cleanroom_spend (
        query_id TEXT PRIMARY KEY,
        analyst TEXT NOT NULL,
        organization TEXT NOT NULL,
        template TEXT NOT NULL,
        epsilon {int} NOT NULL,
        delta {int} NOT NULL,
        at TEXT NOT NULL
    )""",
]


def eps_units(eps: float, *, up: bool) -> int:
    return math.ceil(eps * EPS_UNIT) if up else math.floor(eps * EPS_UNIT)


def delta_units(delta: float, *, up: bool) -> int:
    return math.ceil(delta * DELTA_UNIT) if up else math.floor(delta * DELTA_UNIT)


@dataclass(frozen=True)
class Budget:
    scope: Scope
    principal: str
    epsilon_limit: float
    delta_limit: float
    epsilon_spent: float
    delta_spent: float
    queries: int
    updated_at: str

    @property
    def epsilon_remaining(self) -> float:
        return max(self.epsilon_limit - self.epsilon_spent, 0.0)

    @property
    def delta_remaining(self) -> float:
        return max(self.delta_limit - self.delta_spent, 0.0)

    def to_json(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "principal": self.principal,
            "epsilon_limit": self.epsilon_limit,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
            "delta_limit": self.delta_limit,
            "delta_spent": self.delta_spent,
            "delta_remaining": self.delta_remaining,
            "queries": self.queries,
            "updated_at": self.updated_at,
        }


def _budget(row: tuple[object, ...]) -> Budget:
    scope, principal, el, dl, es, ds, queries, at = row
    assert scope in SCOPES
    return Budget(
        scope=scope,
        principal=str(principal),
        epsilon_limit=int(el) / EPS_UNIT,  # type: ignore[call-overload]
        delta_limit=int(dl) / DELTA_UNIT,  # type: ignore[call-overload]
        epsilon_spent=int(es) / EPS_UNIT,  # type: ignore[call-overload]
        delta_spent=int(ds) / DELTA_UNIT,  # type: ignore[call-overload]
        queries=int(queries),  # type: ignore[call-overload]
        updated_at=str(at),
    )


_COLUMNS = (
    "scope, principal, epsilon_limit, delta_limit, epsilon_spent, delta_spent, queries, updated_at"
)


def check_principal(principal: str) -> str:
    if not principal or len(principal) > 256 or not principal.isprintable():
        raise InputError("a principal must be 1-256 printable characters", field="principal")
    return principal


def check_scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise InputError("scope must be 'analyst' or 'organization'", field="scope")
    return scope


class BudgetStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("cleanroom", DDL)

    def _get(self, cur: Cursor, scope: Scope, principal: str) -> Budget | None:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM cleanroom_budget WHERE scope = ? AND principal = ?",
            (scope, principal),
        ).fetchone()
        return _budget(row) if row else None

    def get(self, scope: Scope, principal: str) -> Budget | None:
        with self.db.transaction() as cur:
            return self._get(cur, scope, principal)

    def list(self, scope: Scope | None = None) -> list[Budget]:
        sql = f"SELECT {_COLUMNS} FROM cleanroom_budget"
        params: tuple[str, ...] = ()
        if scope is not None:
            sql += " WHERE scope = ?"
            params = (scope,)
        return [_budget(r) for r in self.db.query(sql + " ORDER BY scope, principal", params)]

    def set_limits(
        self, scope: Scope, principal: str, epsilon: float, delta: float, at: str
    ) -> tuple[Budget | None, Budget]:
        """Set (raise or lower) the limits; what was spent stays spent."""
        if not (math.isfinite(epsilon) and 0 <= epsilon <= MAX_EPSILON_LIMIT):
            raise InputError(f"epsilon limit must be in [0, {MAX_EPSILON_LIMIT:g}]")
        if not (math.isfinite(delta) and 0 <= delta <= MAX_DELTA_LIMIT):
            raise InputError(f"delta limit must be in [0, {MAX_DELTA_LIMIT:g}]")
        el, dl = eps_units(epsilon, up=False), delta_units(delta, up=False)
        with self.db.transaction(lock=LOCK) as cur:
            before = self._get(cur, scope, principal)
            if before is None:
                cur.execute(
                    "INSERT INTO cleanroom_budget (scope, principal, epsilon_limit, delta_limit,"
                    " epsilon_spent, delta_spent, queries, updated_at)"
                    " VALUES (?, ?, ?, ?, 0, 0, 0, ?)",
                    (scope, principal, el, dl, at),
                )
            else:
                cur.execute(
                    "UPDATE cleanroom_budget SET epsilon_limit = ?, delta_limit = ?,"
                    " updated_at = ? WHERE scope = ? AND principal = ?",
                    (el, dl, at, scope, principal),
                )
            after = self._get(cur, scope, principal)
        assert after is not None
        return before, after

    def reset(self, scope: Scope, principal: str, at: str) -> tuple[Budget, Budget]:
        """Forget what was spent (a new period). Only a logged admin action calls this."""
        with self.db.transaction(lock=LOCK) as cur:
            before = self._get(cur, scope, principal)
            if before is None:
                raise InputError("no budget for this principal", field="principal")
            cur.execute(
                "UPDATE cleanroom_budget SET epsilon_spent = 0, delta_spent = 0, updated_at = ?"
                " WHERE scope = ? AND principal = ?",
                (at, scope, principal),
            )
            after = self._get(cur, scope, principal)
        assert after is not None
        return before, after

    def try_spend(
        self,
        *,
        query_id: str,
        analyst: str,
        organization: str,
        template: str,
        epsilon: float,
        delta: float,
        at: str,
    ) -> bool:
        """Charge both budgets atomically, or neither. False when either would be exceeded.

        Both budgets are always read, whichever would refuse, so a refusal takes the same path
        for an analyst's budget and for the organization's.
        """
        e, d = eps_units(epsilon, up=True), delta_units(delta, up=True)
        try:
            with self.db.transaction(lock=LOCK) as cur:
                ok = True
                for scope, principal in (("analyst", analyst), ("organization", organization)):
                    row = cur.execute(
                        "SELECT epsilon_limit, delta_limit, epsilon_spent, delta_spent"
                        " FROM cleanroom_budget WHERE scope = ? AND principal = ?",
                        (scope, principal),
                    ).fetchone()
                    if row is None:
                        ok = False
                        continue
                    el, dl, es, ds = (int(x) for x in row)
                    ok = ok and es + e <= el and ds + d <= dl
                if not ok:
                    return False
                for scope, principal in (("analyst", analyst), ("organization", organization)):
                    cur.execute(
                        "UPDATE cleanroom_budget SET epsilon_spent = epsilon_spent + ?,"
                        " delta_spent = delta_spent + ?, queries = queries + 1, updated_at = ?"
                        " WHERE scope = ? AND principal = ?"
                        " AND epsilon_spent + ? <= epsilon_limit"
                        " AND delta_spent + ? <= delta_limit",
                        (e, d, at, scope, principal, e, d),
                    )
                    if cur.rowcount != 1:
                        # Someone spent in between (impossible under the lock): undo it all.
                        raise _Raced()
                cur.execute(
                    "INSERT INTO cleanroom_spend (query_id, analyst, organization, template,"
                    " epsilon, delta, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (query_id, analyst, organization, template, e, d, at),
                )
        except _Raced:
            return False
        return True


class _Raced(Exception):
    pass
