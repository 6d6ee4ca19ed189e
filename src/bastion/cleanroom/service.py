"""The clean room's front door: check, charge, bound, release, record, answer.

``CleanRoom.run_query(request, analyst=..., organization=...)`` is what the gateway's
``POST /cleanroom/queries`` and ``bastion cleanroom query`` call. Its order is the security
argument:

1. the request is checked against the templates and the catalog (precise InputErrors: they
   depend on nothing but the request and public declarations);
2. the analyst's and the organization's budgets are charged in one locked transaction, or the
   query is refused (and the refusal is recorded);
3. an engine computes bounded integer aggregates; any engine failure becomes one generic
   error, and the budget stays spent (an error must not be a free probe of the data);
4. the release layer adds OpenDP noise;
5. the query is appended to the ledger; only once that returns is the answer handed back.
   If the ledger is unavailable nothing is returned.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bastion.catalog import Catalog, default_catalog
from bastion.cleanroom.budget import (
    MAX_DELTA_LIMIT,
    MAX_EPSILON_LIMIT,
    Budget,
    BudgetStore,
    Scope,
    check_principal,
    check_scope,
)
from bastion.cleanroom.config import CleanRoomConfig
from bastion.cleanroom.engines import Engine
from bastion.cleanroom.release import Release, ResultRow, release
from bastion.cleanroom.templates import QueryPlan, QueryRequest, compile_plan, parse_request
from bastion.clock import Clock, iso
from bastion.errors import BastionError, InputError
from bastion.events import Actor, AnalyticsBudgetChange, AnalyticsQuery
from bastion.home import Home
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.settings import Settings
from bastion.store import Database

log = logging.getLogger(__name__)

REFUSED_MESSAGE = "query refused"
FAILED_MESSAGE = "query could not be completed"


class QueryRefused(BastionError):
    """The privacy budget does not allow the query. Every refusal reads the same."""

    exit_code = 8

    def __init__(self) -> None:
        super().__init__(REFUSED_MESSAGE)


class QueryFailed(BastionError):
    """The engine failed. Generic on purpose: details could depend on the data."""

    exit_code = 9

    def __init__(self) -> None:
        super().__init__(FAILED_MESSAGE)


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    template: str
    parameters: dict[str, Any]
    rows: list[ResultRow]
    keys_released: int
    epsilon_spent: float
    delta_spent: float
    confidence: float
    mechanisms: list[str]
    engine: str
    receipt: Receipt

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "template": self.template,
            "parameters": self.parameters,
            "rows": [r.to_json() for r in self.rows],
            "keys_released": self.keys_released,
            "epsilon_spent": self.epsilon_spent,
            "delta_spent": self.delta_spent,
            "confidence": self.confidence,
            "mechanisms": self.mechanisms,
            "engine": self.engine,
            "receipt": self.receipt.to_json(),
        }


def _actor(analyst: str, organization: str) -> Actor:
    return Actor(id=analyst, kind="principal", employer=organization, role="analyst")


class CleanRoom:
    def __init__(
        self,
        db: Database,
        ledger: LedgerWriter,
        clock: Clock,
        engine: Engine,
        *,
        catalog: Catalog | None = None,
        config: CleanRoomConfig | None = None,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.engine = engine
        self.catalog = catalog or default_catalog()
        self.config = config or CleanRoomConfig()
        self.budgets = BudgetStore(db)

    # ---- queries ----------------------------------------------------------------------------

    def plan(self, request: QueryRequest | dict[str, Any]) -> QueryPlan:
        req = request if isinstance(request, QueryRequest) else parse_request(request)
        return compile_plan(req, self.catalog, self.config)

    def run_query(
        self,
        request: QueryRequest | dict[str, Any],
        *,
        analyst: str,
        organization: str,
        reason: str = "clean-room query",
    ) -> QueryResult:
        started = time.monotonic()
        check_principal(analyst)
        check_principal(organization)
        plan = self.plan(request)
        query_id = uuid.uuid4().hex
        params = plan.parameters()
        actor = _actor(analyst, organization)

        def record(outcome: str, eps: float, delta: float, keys: int) -> Receipt:
            return self.ledger.append(
                AnalyticsQuery(
                    actor=actor,
                    reason=reason,
                    at=iso(self.clock.now()),
                    analyst=analyst,
                    organization=organization,
                    template=plan.template.name,
                    parameters=params,
                    epsilon_spent=eps,
                    delta_spent=delta,
                    keys_released=keys,
                    query_id=query_id,
                    outcome=outcome,
                )
            )

        opener = getattr(self.engine, "open", None)
        if callable(opener):
            opener()  # a missing data directory is a ConfigError, raised before any charge
        charged = self.budgets.try_spend(
            query_id=query_id,
            analyst=analyst,
            organization=organization,
            template=plan.template.name,
            epsilon=plan.epsilon,
            delta=plan.delta,
            at=iso(self.clock.now()),
        )
        if not charged:
            record("refused", 0.0, 0.0, 0)
            self._pad(started)
            raise QueryRefused()
        try:
            aggregate = self.engine.aggregate(plan, secrets.token_hex(16))
            released: Release = release(
                plan, aggregate, selection_share=self.config.selection_share
            )
        except Exception as exc:
            log.warning("clean-room query %s failed: %s", query_id, type(exc).__name__)
            record("failed", plan.epsilon, plan.delta, 0)
            self._pad(started)
            raise QueryFailed() from None
        # Charged: the planned epsilon (the mechanisms' own maps sum to at most this).
        receipt = record("released", plan.epsilon, plan.delta, released.keys_released)
        self._pad(started)
        return QueryResult(
            query_id=query_id,
            template=plan.template.name,
            parameters=params,
            rows=released.rows,
            keys_released=released.keys_released,
            epsilon_spent=plan.epsilon,
            delta_spent=plan.delta,
            confidence=released.confidence,
            mechanisms=released.mechanisms,
            engine=self.engine.name,
            receipt=receipt,
        )

    def _pad(self, started: float) -> None:
        """Round the response time up to a multiple of the configured quantum (if any)."""
        quantum = self.config.response_quantum_s
        if quantum > 0:
            elapsed = time.monotonic() - started
            time.sleep(quantum - (elapsed % quantum))

    # ---- budgets (administrator actions, always logged first) ------------------------------

    def set_budget(
        self,
        scope: str,
        principal: str,
        *,
        epsilon: float,
        delta: float,
        admin: Actor,
        reason: str,
    ) -> Budget:
        """Set, raise or lower a budget's limits. The ledger records it before it applies."""
        sc: Scope = check_scope(scope)
        check_principal(principal)
        before = self.budgets.get(sc, principal)
        self._check_limits(epsilon, delta)
        self._record_change("set", sc, principal, epsilon, delta, before, admin, reason)
        _, after = self.budgets.set_limits(sc, principal, epsilon, delta, iso(self.clock.now()))
        return after

    def reset_budget(self, scope: str, principal: str, *, admin: Actor, reason: str) -> Budget:
        """Forget what a principal has spent. The ledger records it before it applies."""
        sc: Scope = check_scope(scope)
        before = self.budgets.get(sc, check_principal(principal))
        if before is None:
            raise InputError("no budget for this principal", field="principal")
        self._record_change(
            "reset", sc, principal, before.epsilon_limit, before.delta_limit, before, admin, reason
        )
        _, after = self.budgets.reset(sc, principal, iso(self.clock.now()))
        return after

    def _record_change(
        self,
        action: Literal["set", "reset"],
        scope: Scope,
        principal: str,
        epsilon: float,
        delta: float,
        before: Budget | None,
        admin: Actor,
        reason: str,
    ) -> None:
        """Append the admin action to the ledger; it raises (and nothing changes) if it can't."""
        self.ledger.append(
            AnalyticsBudgetChange(
                actor=admin,
                reason=reason,
                at=iso(self.clock.now()),
                scope=scope,
                principal=principal,
                action=action,
                epsilon_limit=epsilon,
                delta_limit=delta,
                previous_epsilon_limit=before.epsilon_limit if before else None,
                previous_epsilon_spent=before.epsilon_spent if before else None,
            )
        )

    @staticmethod
    def _check_limits(epsilon: float, delta: float) -> None:
        if not 0 <= epsilon <= MAX_EPSILON_LIMIT:
            raise InputError(f"epsilon limit must be in [0, {MAX_EPSILON_LIMIT:g}]")
        if not 0 <= delta <= MAX_DELTA_LIMIT:
            raise InputError(f"delta limit must be in [0, {MAX_DELTA_LIMIT:g}]")

    def budget_report(
        self, analyst: str | None = None, organization: str | None = None
    ) -> list[Budget]:
        out = []
        for scope, who in (("analyst", analyst), ("organization", organization)):
            if who is not None:
                b = self.budgets.get(scope, who)  # type: ignore[arg-type]
                if b is not None:
                    out.append(b)
        if analyst is None and organization is None:
            out = self.budgets.list()
        return out


def open_cleanroom(
    home: Home,
    db: Database,
    ledger: LedgerWriter,
    clock: Clock,
    *,
    engine: str = "duckdb",
    data_dir: Path | None = None,
    catalog: Catalog | None = None,
) -> CleanRoom:
    """The clean room of a home: ``[cleanroom]`` settings, and an engine over the snapshot
    Bastion built from the vault in its data directory (``snapshot.py``), which refuses a
    missing or stale one.

    For the gateway: ``open_cleanroom(home, db, log, clock).run_query(body, analyst=principal.id,
    organization=principal.org)``.
    """
    from bastion.cleanroom.snapshot_engine import SnapshotEngine

    config = CleanRoomConfig.from_settings(home.settings)
    where = data_dir or default_data_dir(home.path, home.settings)
    max_age = home.settings.cleanroom.max_snapshot_age_seconds
    return CleanRoom(
        db,
        ledger,
        clock,
        SnapshotEngine(engine, where, clock, max_age_s=max_age),
        catalog=catalog,
        config=config,
    )


def default_data_dir(home_path: Path, settings: Settings) -> Path:
    """``[cleanroom] data_dir`` from bastion.toml, else ``<home>/cleanroom``."""
    configured = settings.cleanroom.data_dir
    return Path(configured) if configured else home_path / "cleanroom"
