"""A template is one object in one file: this file defines and registers a new one (shares, the
number of ``share`` events per group) and nothing else in Bastion changes, yet it is checked,
bounded on DuckDB, released through OpenDP and recorded like the shipped ones."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from cleanroom_ledger import recorded

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoom, CleanRoomConfig, DuckDBEngine, compile_plan
from bastion.cleanroom.plan import (
    Aggregates,
    QueryPlan,
    QueryTemplate,
    register_template,
    unregister_template,
)
from bastion.cleanroom.release import Releaser, ResultRow
from bastion.cleanroom.templates import parse_request
from bastion.errors import InputError
from bastion.events import Actor, AnalyticsQuery
from bastion.ledger.log import Log

ADMIN = Actor(id="admin@custodian", kind="operator", role="privacy-officer")
SALT = "00112233445566778899aabbccddeeff"


class Shares(QueryTemplate):
    """Share events per group: the rows flagged ``event_type = share``, bounded like count.

    Sensitivity: one user's shares in a group are at most R rows of weight W, in at most G
    groups (L-inf R*W, L1 G*R*W)."""

    name = "toy_shares"
    summary = "number of share events"
    parameters = frozenset({"max_rows_per_group"})
    fixed_columns = frozenset({"event_type"})

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        return Aggregates(flag=("event_type", "share"))

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        return r.counts("clicks_w", r.R * r.W, float(r.W), "shares")


@pytest.fixture
def shares() -> Iterator[QueryTemplate]:
    template = register_template(Shares())
    yield template
    unregister_template(template.name)


def _plan(**req: object) -> QueryPlan:
    return compile_plan(parse_request(req), default_catalog(), CleanRoomConfig())


def test_its_parameters_are_checked(shares: QueryTemplate) -> None:
    plan = _plan(template="toy_shares", epsilon=1, group_by=["region"])
    assert plan.template is shares and plan.max_rows == 10
    assert plan.parameters()["max_rows_per_group"] == 10
    with pytest.raises(InputError, match="does not apply to template 'toy_shares'"):
        _plan(template="toy_shares", epsilon=1, measure="watch_time_s")
    with pytest.raises(InputError, match="cannot be grouped by event type"):
        _plan(template="toy_shares", epsilon=1, group_by=["event_type"])


def test_unregistered_it_is_unknown() -> None:
    with pytest.raises(InputError, match="unknown template 'toy_shares'"):
        _plan(template="toy_shares", epsilon=1)


def test_duckdb_bounds_exactly_what_it_asks_for(shares: QueryTemplate, duck: DuckDBEngine) -> None:
    # Every region is a group a user may keep (G = 8) and R is far above anyone's shares, so
    # the bounded aggregate is the exact count of share events per region.
    plan = _plan(
        template="toy_shares",
        epsilon=1,
        group_by=["region"],
        max_groups_per_user=8,
        max_rows_per_group=1000,
    )
    got = duck.aggregate(plan, SALT)
    exact = dict(
        duckdb.sql(
            f"SELECT CAST(region AS VARCHAR), COUNT(*) FILTER (WHERE event_type = 'share') "
            f"FROM read_parquet('{duck.path}') GROUP BY 1"
        ).fetchall()
    )
    assert {k[0]: g.clicks_w // plan.row_weight for k, g in got.groups.items()} == exact
    assert sum(exact.values()) > 0, "the data has share events"


def test_released_and_recorded_end_to_end(
    shares: QueryTemplate, room: CleanRoom, ledger: Log
) -> None:
    room.set_budget("analyst", "ana", epsilon=2, delta=1e-6, admin=ADMIN, reason="onboard")
    room.set_budget("organization", "acme", epsilon=10, delta=1e-6, admin=ADMIN, reason="o")
    res = room.run_query(
        {"template": "toy_shares", "epsilon": 0.5, "group_by": ["age_band"]},
        analyst="ana",
        organization="acme",
    )
    assert res.keys_released == 7 and {r.statistic for r in res.rows} == {"shares"}
    for row in res.rows:
        assert row.noise_scale == pytest.approx(20.0)  # G*R/eps shares = 1*10/0.5
        assert row.ci_low is not None and row.ci_high is not None
        assert row.ci_low <= (row.value or 0) <= row.ci_high
    assert res.epsilon_spent <= 0.5 * (1 + 1e-9)
    entry = recorded(ledger)[res.receipt.index]
    assert isinstance(entry, AnalyticsQuery) and entry.template == "toy_shares"
    assert entry.outcome == "released" and entry.parameters["max_rows_per_group"] == 10
