"""The service on both store backends: budgets, refusals, concurrency, and ledger-first answers."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cleanroom_ledger import ledger_outage, recorded

from bastion.cleanroom import CleanRoom, QueryFailed, QueryRefused
from bastion.cleanroom.engines import BoundedAggregate
from bastion.cleanroom.templates import QueryPlan
from bastion.errors import InputError, LedgerUnavailable
from bastion.events import Actor, AnalyticsBudgetChange, AnalyticsQuery
from bastion.ledger.log import Log

ADMIN = Actor(id="admin@custodian", kind="operator", role="privacy-officer")
Q = {"template": "count", "epsilon": 0.5, "group_by": ["age_band"]}


def grant(room: CleanRoom, eps: float = 2.0, delta: float = 1e-6) -> None:
    room.set_budget("analyst", "ana", epsilon=eps, delta=delta, admin=ADMIN, reason="onboard")
    room.set_budget("organization", "acme", epsilon=eps * 5, delta=delta, admin=ADMIN, reason="o")


def test_query_released_with_noise_scale_and_ci(room: CleanRoom, ledger: Log) -> None:
    grant(room)
    res = room.run_query(Q, analyst="ana", organization="acme")
    assert res.keys_released == 7 and len(res.rows) == 7
    assert {r.group["age_band"] for r in res.rows} == {
        "13-17",
        "18-24",
        "25-34",
        "35-44",
        "45-54",
        "55-64",
        "65+",
    }
    for row in res.rows:
        assert row.noise_scale == pytest.approx(20.0)  # G*R/eps rows = 1*10/0.5
        assert row.ci_low is not None and row.ci_high is not None
        assert row.ci_low <= (row.value or 0) <= row.ci_high
    entry = recorded(ledger)[res.receipt.index]
    assert isinstance(entry, AnalyticsQuery)
    assert entry.analyst == "ana" and entry.organization == "acme" and entry.template == "count"
    assert entry.epsilon_spent == 0.5 and entry.keys_released == 7
    assert entry.outcome == "released" and entry.query_id == res.query_id
    assert entry.parameters["group_by"] == ["age_band"]
    analyst = room.budgets.get("analyst", "ana")
    assert analyst is not None and analyst.epsilon_spent == pytest.approx(0.5)


def test_private_keys_spend_delta(room: CleanRoom) -> None:
    grant(room)
    res = room.run_query(
        {"template": "ctr", "epsilon": 1, "group_by": ["campaign_id"], "max_groups_per_user": 3},
        analyst="ana",
        organization="acme",
    )
    assert res.delta_spent == pytest.approx(1e-7)
    assert 0 < res.keys_released < 30, "partition selection drops the smallest campaigns"
    org = room.budgets.get("organization", "acme")
    assert org is not None and org.delta_spent == pytest.approx(1e-7)


def test_budget_exhausted_is_refused_and_logged(room: CleanRoom, ledger: Log) -> None:
    grant(room, eps=1.0)
    room.run_query(Q, analyst="ana", organization="acme")
    room.run_query(Q, analyst="ana", organization="acme")
    with pytest.raises(QueryRefused) as exc:
        room.run_query(Q, analyst="ana", organization="acme")
    assert str(exc.value) == "query refused"
    last = recorded(ledger)[-1]
    assert isinstance(last, AnalyticsQuery) and last.outcome == "refused"
    assert last.epsilon_spent == 0
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == pytest.approx(1.0) and b.queries == 2


def test_refusals_look_alike(room: CleanRoom) -> None:
    """Analyst budget, organization budget and no budget at all: the same refusal."""
    room.set_budget("analyst", "ana", epsilon=0.1, delta=0, admin=ADMIN, reason="tiny")
    room.set_budget("organization", "acme", epsilon=10, delta=0, admin=ADMIN, reason="big")
    room.set_budget("analyst", "bob", epsilon=10, delta=0, admin=ADMIN, reason="big")
    room.set_budget("organization", "poor", epsilon=0.1, delta=0, admin=ADMIN, reason="tiny")
    messages = []
    for analyst, org in (("ana", "acme"), ("bob", "poor"), ("nobody", "acme"), ("bob", "nope")):
        with pytest.raises(QueryRefused) as exc:
            room.run_query(Q, analyst=analyst, organization=org)
        messages.append((type(exc.value), str(exc.value), exc.value.exit_code))
    assert len(set(messages)) == 1


def test_delta_budget_refuses_private_keys(room: CleanRoom) -> None:
    room.set_budget("analyst", "ana", epsilon=10, delta=0, admin=ADMIN, reason="no delta")
    room.set_budget("organization", "acme", epsilon=10, delta=1e-5, admin=ADMIN, reason="o")
    room.run_query(Q, analyst="ana", organization="acme")  # public groups: no delta
    with pytest.raises(QueryRefused):
        room.run_query(
            {"template": "count", "epsilon": 0.5, "group_by": ["campaign_id"]},
            analyst="ana",
            organization="acme",
        )


def test_bad_input_charges_nothing(room: CleanRoom, ledger: Log) -> None:
    grant(room)
    before = ledger.size()
    for req in (
        {"template": "nope", "epsilon": 1},
        {"template": "count", "epsilon": 0},
        {"template": "count", "epsilon": 5},
        {"template": "count", "epsilon": 1, "group_by": ["user_id"]},
        {"template": "count", "epsilon": 1, "where": {"region": ["mars"]}},
    ):
        with pytest.raises(InputError):
            room.run_query(req, analyst="ana", organization="acme")
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == 0 and ledger.size() == before


def test_admin_actions_are_logged_first(room: CleanRoom, ledger: Log) -> None:
    grant(room, eps=0.5)
    room.run_query(Q, analyst="ana", organization="acme")
    with pytest.raises(QueryRefused):
        room.run_query(Q, analyst="ana", organization="acme")
    room.set_budget("analyst", "ana", epsilon=1.0, delta=1e-6, admin=ADMIN, reason="raise")
    room.run_query(Q, analyst="ana", organization="acme")
    after = room.reset_budget("analyst", "ana", admin=ADMIN, reason="new quarter")
    assert after.epsilon_spent == 0 and after.epsilon_limit == 1.0
    changes = [e for e in recorded(ledger) if isinstance(e, AnalyticsBudgetChange)]
    assert [(c.principal, c.action) for c in changes] == [
        ("ana", "set"),
        ("acme", "set"),
        ("ana", "set"),
        ("ana", "reset"),
    ]
    assert changes[2].previous_epsilon_limit == 0.5 and changes[3].previous_epsilon_spent == 1.0
    assert all(c.actor.id == ADMIN.id for c in changes)
    # With the ledger down, an admin change is refused and nothing changes.
    size = ledger.size()
    with ledger_outage(room.db):
        with pytest.raises(LedgerUnavailable, match="could not record"):
            room.set_budget("analyst", "ana", epsilon=100, delta=1e-6, admin=ADMIN, reason="sneaky")
        with pytest.raises(LedgerUnavailable, match="could not record"):
            room.reset_budget("analyst", "ana", admin=ADMIN, reason="sneaky")
        b = room.budgets.get("analyst", "ana")
        assert b is not None and b.epsilon_limit == 1.0
    assert ledger.size() == size, "the failed appends recorded nothing"


def test_bad_budget_values(room: CleanRoom) -> None:
    for eps, delta in ((-1.0, 0.0), (float("nan"), 0.0), (1e9, 0.0), (1.0, 0.5)):
        with pytest.raises(InputError):
            room.set_budget("analyst", "ana", epsilon=eps, delta=delta, admin=ADMIN, reason="x")
    with pytest.raises(InputError):
        room.set_budget("team", "ana", epsilon=1, delta=0, admin=ADMIN, reason="x")
    with pytest.raises(InputError):
        room.reset_budget("analyst", "ghost", admin=ADMIN, reason="x")


def test_no_answer_without_the_ledger(room: CleanRoom, ledger: Log) -> None:
    grant(room)
    size = ledger.size()
    with ledger_outage(room.db), pytest.raises(LedgerUnavailable, match="could not record"):
        room.run_query(Q, analyst="ana", organization="acme")
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == pytest.approx(0.5), "spent, though unanswered"
    assert ledger.size() == size, "the failed append recorded nothing"


def test_ledger_entry_precedes_the_answer(room: CleanRoom, ledger: Log) -> None:
    """The answer is only built after the append has returned."""
    grant(room)
    seen: list[int] = []
    original = ledger.append

    def spy(event: Any) -> Any:
        receipt = original(event)
        seen.append(receipt.index)
        return receipt

    ledger.append = spy  # type: ignore[method-assign]
    res = room.run_query(Q, analyst="ana", organization="acme")
    assert seen and seen[-1] == res.receipt.index
    entry = recorded(ledger)[res.receipt.index]
    assert isinstance(entry, AnalyticsQuery) and entry.query_id == res.query_id


class _BrokenEngine:
    name = "broken"

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate:
        raise RuntimeError("Binder Error: column 'secret_value_42' not found")

    def close(self) -> None:
        pass


def test_engine_failure_is_generic(room: CleanRoom, ledger: Log) -> None:
    grant(room)
    room.engine = _BrokenEngine()
    with pytest.raises(QueryFailed) as exc:
        room.run_query(Q, analyst="ana", organization="acme")
    assert str(exc.value) == "query could not be completed"
    assert "secret" not in str(exc.value)
    last = recorded(ledger)[-1]
    assert isinstance(last, AnalyticsQuery) and last.outcome == "failed"
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == pytest.approx(0.5)


def test_parallel_queries_never_overspend(room: CleanRoom, ledger: Log) -> None:
    """16 concurrent queries of 0.5 against a budget of 2.0: exactly 4 are answered."""
    grant(room, eps=2.0)
    barrier = threading.Barrier(8)

    def one(_: int) -> str:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=30)
        try:
            room.run_query(Q, analyst="ana", organization="acme")
            return "ok"
        except QueryRefused:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(one, range(16)))
    assert outcomes.count("ok") == 4 and outcomes.count("refused") == 12
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == pytest.approx(2.0) and b.queries == 4
    spent = sum(
        e.epsilon_spent
        for e in recorded(ledger)
        if isinstance(e, AnalyticsQuery) and e.outcome == "released"
    )
    assert spent == pytest.approx(2.0)


def test_parallel_spending_across_store_instances(room: CleanRoom) -> None:
    """Two BudgetStores on the same database (as two gateway processes would have)."""
    from bastion.cleanroom import BudgetStore

    grant(room, eps=1.0)
    other = BudgetStore(room.db)
    results: list[bool] = []
    lock = threading.Lock()

    def spend(i: int) -> None:
        store = room.budgets if i % 2 else other
        ok = store.try_spend(
            query_id=f"q{i}",
            analyst="ana",
            organization="acme",
            template="count",
            epsilon=0.1,
            delta=0,
            at="2026-01-01T00:00:00Z",
        )
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == pytest.approx(1.0)


def test_missing_data_is_a_config_error_before_any_charge(
    db: Any, ledger: Log, clock: Any, tmp_path: Any
) -> None:
    from bastion.cleanroom import LazyEngine
    from bastion.errors import ConfigError

    room = CleanRoom(db, ledger, clock, LazyEngine("duckdb", tmp_path / "nowhere"))
    grant(room)
    with pytest.raises(ConfigError):
        room.run_query(Q, analyst="ana", organization="acme")
    b = room.budgets.get("analyst", "ana")
    assert b is not None and b.epsilon_spent == 0
    assert not [e for e in recorded(ledger) if isinstance(e, AnalyticsQuery)]
    with pytest.raises(ConfigError):
        LazyEngine("postgres", tmp_path)
