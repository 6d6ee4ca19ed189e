"""Engines: DuckDB and Spark give identical bounded aggregates before noise, and both match an
independent pure-Python implementation of the bounding rules."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoomConfig, DuckDBEngine, QueryPlan, SparkEngine, compile_plan
from bastion.cleanroom.engines import BoundedAggregate, GroupAggregate
from bastion.cleanroom.templates import Template, parse_request

CAT = default_catalog()
CFG = CleanRoomConfig()
SALT = "5a175a175a175a17"

REQUESTS: list[dict[str, Any]] = [
    {"template": "count", "epsilon": 1},
    {"template": "count", "epsilon": 1, "group_by": ["day"], "max_groups_per_user": 3},
    {"template": "distinct_users", "epsilon": 1, "group_by": ["age_band", "region"]},
    {
        "template": "count",
        "epsilon": 1,
        "group_by": ["campaign_id"],
        "where": {"event_type": ["ad_click"]},
        "max_groups_per_user": 2,
        "max_rows_per_group": 3,
    },
    {
        "template": "sum",
        "epsilon": 1,
        "group_by": ["campaign_id", "day"],
        "measure": "revenue_usd",
        "max_groups_per_user": 5,
        "max_rows_per_group": 2,
    },
    {
        "template": "mean",
        "epsilon": 1,
        "group_by": ["age_band"],
        "measure": "watch_time_s",
        "where": {"event_type": ["view"]},
        "clamp": [0, 60],
    },
    {
        "template": "quantiles",
        "epsilon": 1,
        "group_by": ["region", "event_type"],
        "measure": "watch_time_s",
        "bins": 50,
        "max_groups_per_user": 1,
        "max_rows_per_group": 4,
    },
    {"template": "ctr", "epsilon": 1, "group_by": ["campaign_id"], "max_groups_per_user": 3},
]


def _plan(req: dict[str, Any]) -> QueryPlan:
    return compile_plan(parse_request(req), CAT, CFG)


@pytest.fixture(scope="module")
def spark(platform_dir: Path) -> Iterator[SparkEngine]:
    engine = SparkEngine(platform_dir, master="local[2]")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def events(platform_dir: Path) -> list[dict[str, Any]]:
    return pq.read_table(platform_dir / "events.parquet").to_pylist()  # type: ignore[no-any-return]


def _text(v: Any) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def reference(plan: QueryPlan, events: list[dict[str, Any]], salt: str) -> BoundedAggregate:
    """The bounding rules of bastion.cleanroom.sql, written again without SQL."""
    R, W, G = plan.max_rows, plan.row_weight, plan.max_groups
    per_ug: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(lambda: [0, 0, 0])
    hist: dict[tuple[str, tuple[str, ...]], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    where = dict(plan.where)
    for e in events:
        if e[plan.subject] is None or any(e[c] is None for c in plan.group_by):
            continue
        key = tuple(_text(e[c]) for c in plan.group_by)
        if any(d is not None and k not in d for k, d in zip(key, plan.domains, strict=True)):
            continue
        if any(_text(e[c]) not in vals for c, vals in where.items()):
            continue
        v = 0
        if plan.measure is not None:
            x = e[plan.measure.column]
            if x is None or not math.isfinite(x):
                continue
            lo, hi = plan.clamp_units
            v = min(max(math.floor(float(x) / plan.measure.unit + 0.5), lo), hi)
        acc = per_ug[(e[plan.subject], key)]
        acc[0] += 1
        acc[1] += v
        acc[2] += int(e["event_type"] == "ad_click")
        if plan.template is Template.QUANTILES:
            lo, hi = plan.clamp_units
            b = min((v - lo) * plan.bins // (hi - lo), plan.bins - 1)
            hist[(e[plan.subject], key)][b] += 1
    by_user: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for uid, key in per_ug:
        by_user[uid].append(key)
    needs_bound = bool(plan.group_by) and (plan.private_keys or plan.public_group_count > G)
    kept: list[tuple[str, tuple[str, ...]]] = []
    for uid, keys in by_user.items():
        if needs_bound:
            keys = sorted(
                keys,
                key=lambda k, u=uid: (
                    hashlib.md5("|".join([u, *k, salt]).encode()).hexdigest(),
                    k,
                ),
            )[:G]
        kept.extend((uid, k) for k in keys)
    groups: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    hists: dict[tuple[str, ...], list[int]] = {}
    for uid, key in kept:
        n, s, c = per_ug[(uid, key)]
        g = groups[key]
        g[0] += n * W if n <= R else (n * R * W) // n
        g[1] += 1
        if plan.measure is not None and plan.template is not Template.QUANTILES:
            g[2] += s if n <= R else (s * R) // n
        if plan.template is Template.CTR:
            g[3] += c * W if n <= R else (c * R * W) // n
        if plan.template is Template.QUANTILES:
            h = hists.setdefault(key, [0] * plan.bins)
            for b, cnt in hist[(uid, key)].items():
                h[b] += cnt * W if n <= R else (cnt * R * W) // n
    if plan.template is Template.QUANTILES:
        return BoundedAggregate({}, {k: tuple(v) for k, v in hists.items()})
    return BoundedAggregate({k: GroupAggregate(*v) for k, v in groups.items()}, {})


@pytest.mark.parametrize(
    "req", REQUESTS, ids=lambda r: f"{r['template']}-{'x'.join(r.get('group_by', []))}"
)
def test_duckdb_matches_reference(
    duck: DuckDBEngine, events: list[dict[str, Any]], req: dict[str, Any]
) -> None:
    plan = _plan(req)
    got = duck.aggregate(plan, SALT)
    want = reference(plan, events, SALT)
    assert got == want
    assert got.groups or got.histograms, "the query selects something"


def test_spark_and_duckdb_identical_before_noise(duck: DuckDBEngine, spark: SparkEngine) -> None:
    for req in REQUESTS:
        plan = _plan(req)
        for salt in (SALT, "00ff00ff00ff00ff00ff"):
            assert spark.aggregate(plan, salt) == duck.aggregate(plan, salt), req


def test_bounds_hold_per_user(duck: DuckDBEngine, events: list[dict[str, Any]]) -> None:
    """With R = G = 1 every user adds at most one row's weight to the total."""
    plan = _plan(
        {
            "template": "count",
            "epsilon": 1,
            "group_by": ["campaign_id"],
            "max_groups_per_user": 1,
            "max_rows_per_group": 1,
        }
    )
    agg = duck.aggregate(plan, SALT)
    users = {e["user_id"] for e in events if e["campaign_id"] is not None}
    assert sum(g.users for g in agg.groups.values()) == len(users)
    assert sum(g.rows_w for g in agg.groups.values()) == len(users) * plan.row_weight


def test_salt_changes_group_choice_not_totals(duck: DuckDBEngine) -> None:
    plan = _plan(
        {"template": "distinct_users", "epsilon": 1, "group_by": ["day"], "max_groups_per_user": 1}
    )
    a, b = duck.aggregate(plan, SALT), duck.aggregate(plan, "abcdefabcdefabcdef")
    assert a != b, "a fresh salt picks other groups for multi-day users"
    assert sum(g.users for g in a.groups.values()) == sum(g.users for g in b.groups.values())


def test_generous_bounds_equal_exact_answer(
    duck: DuckDBEngine, events: list[dict[str, Any]]
) -> None:
    plan = _plan(
        {
            "template": "count",
            "epsilon": 1,
            "group_by": ["event_type"],
            "max_groups_per_user": 5,
            "max_rows_per_group": 1000,
        }
    )
    agg = duck.aggregate(plan, SALT)
    exact: dict[str, int] = defaultdict(int)
    for e in events:
        exact[e["event_type"]] += 1
    per_user: dict[tuple[str, str], int] = defaultdict(int)
    for e in events:
        per_user[(e["user_id"], e["event_type"])] += 1
    heaviest = max(per_user.values())
    assert heaviest < 1000
    assert {k[0]: g.rows_w // plan.row_weight for k, g in agg.groups.items()} == exact
