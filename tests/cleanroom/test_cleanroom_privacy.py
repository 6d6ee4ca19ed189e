"""Empirical privacy test: released answers on the full platform and on its neighbour with the
heaviest user removed must be consistent with the declared epsilon; with bounding switched off
(a planted bug) the same test must detect the leak.

For every threshold t we estimate P[answer >= t] (and P[answer <= t]) on both datasets from
many independent releases, and take the Clopper-Pearson lower bound of one probability over
the upper bound of the other. Their log-ratio is a high-confidence LOWER bound on the privacy
loss actually incurred: if it exceeds the declared epsilon, the implementation is not
epsilon-DP.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy.stats import beta

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoomConfig, DuckDBEngine, QueryPlan, compile_plan, release
from bastion.cleanroom.engines import BoundedAggregate
from bastion.cleanroom.templates import parse_request

RUNS = 3_000
CONFIDENCE = 0.999
SALT = "0123456789abcdef0123"
EPSILON = 1.0


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def empirical_epsilon_lower_bound(a: Sequence[float], b: Sequence[float]) -> float:
    """A lower bound (at CONFIDENCE, Bonferroni over all tested events) on the privacy loss."""
    xa, xb = np.asarray(a), np.asarray(b)
    thresholds = np.unique(np.quantile(np.concatenate([xa, xb]), np.linspace(0.02, 0.98, 25)))
    tests = 4 * len(thresholds)
    alpha = (1 - CONFIDENCE) / tests
    best = 0.0
    for t in thresholds:
        for p, q in (
            (xa >= t, xb >= t),
            (xb >= t, xa >= t),
            (xa <= t, xb <= t),
            (xb <= t, xa <= t),
        ):
            p_lo, _ = clopper_pearson(int(p.sum()), len(p), alpha)
            _, q_hi = clopper_pearson(int(q.sum()), len(q), alpha)
            if p_lo > 0:
                best = max(best, math.log(p_lo / q_hi))
    return best


@pytest.fixture(scope="module")
def neighbours(platform_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The platform, and the platform without its heaviest user."""
    table = pq.read_table(platform_dir / "events.parquet")
    counts = table.group_by("user_id").aggregate([("event_id", "count")])
    heaviest_row = int(np.argmax(counts.column("event_id_count").to_numpy()))
    heaviest = counts.column("user_id")[heaviest_row].as_py()
    heaviest_events = counts.column("event_id_count")[heaviest_row].as_py()
    out = tmp_path_factory.mktemp("neighbour")
    pq.write_table(
        table.filter(pc.not_equal(table.column("user_id"), heaviest)), out / "events.parquet"
    )
    region = table.filter(pc.equal(table.column("user_id"), heaviest)).column("region")[0].as_py()
    return {
        "full": DuckDBEngine(platform_dir, threads=1),
        "neighbour": DuckDBEngine(out, threads=1),
        "heaviest_events": heaviest_events,
        "region": region,
    }


def _plan(req: dict[str, Any]) -> QueryPlan:
    return compile_plan(parse_request(req), default_catalog(), CleanRoomConfig())


def _answers(plan: QueryPlan, agg: BoundedAggregate, pick: dict[str, str]) -> list[float]:
    out = []
    for _ in range(RUNS):
        rel = release(plan, agg)
        (row,) = [r for r in rel.rows if all(r.group.get(k) == v for k, v in pick.items())]
        assert row.value is not None
        out.append(row.value)
    return out


def _check(
    neighbours: dict[str, Any], req: dict[str, Any], pick: dict[str, str], *, bounded: bool
) -> float:
    plan = _plan(req)
    engine_plan = plan
    if not bounded:
        # The planted bug: the engine stops bounding contributions, while the release layer
        # still calibrates its noise to the declared bounds.
        engine_plan = dataclasses.replace(plan, max_rows=10**6, max_groups=10**6)
    full = neighbours["full"].aggregate(engine_plan, SALT)
    near = neighbours["neighbour"].aggregate(engine_plan, SALT)
    assert full != near
    return empirical_epsilon_lower_bound(_answers(plan, full, pick), _answers(plan, near, pick))


def test_heaviest_user_is_heavy(neighbours: dict[str, Any]) -> None:
    assert neighbours["heaviest_events"] > 50, "the test needs a user far above the bounds"


def test_total_count_is_consistent_with_epsilon(neighbours: dict[str, Any]) -> None:
    req = {"template": "count", "epsilon": EPSILON, "max_rows_per_group": 2}
    assert _check(neighbours, req, {}, bounded=True) <= EPSILON


def test_sum_by_region_is_consistent_with_epsilon(neighbours: dict[str, Any]) -> None:
    req = {
        "template": "sum",
        "epsilon": EPSILON,
        "measure": "watch_time_s",
        "group_by": ["region"],
        "clamp": [0, 30],
        "max_rows_per_group": 2,
    }
    pick = {"region": neighbours["region"]}
    assert _check(neighbours, req, pick, bounded=True) <= EPSILON


def test_planted_bug_without_bounding_is_caught(neighbours: dict[str, Any]) -> None:
    req = {"template": "count", "epsilon": EPSILON, "max_rows_per_group": 2}
    leaked = _check(neighbours, req, {}, bounded=False)
    assert leaked > EPSILON, f"the empirical test must catch the unbounded engine ({leaked:.2f})"

    req = {
        "template": "sum",
        "epsilon": EPSILON,
        "measure": "watch_time_s",
        "group_by": ["region"],
        "clamp": [0, 30],
        "max_rows_per_group": 2,
    }
    leaked = _check(neighbours, req, {"region": neighbours["region"]}, bounded=False)
    assert leaked > EPSILON, f"the empirical test must catch the unbounded engine ({leaked:.2f})"


def test_partition_selection_hides_a_lone_users_key() -> None:
    """Partition selection: a key only one user has appears with probability at most delta.

    Checked on the bounded aggregates: the threshold exceeds what one user can contribute.
    """
    from bastion.cleanroom.release import laplace_threshold

    sel = laplace_threshold({"solo": 1}, l0=1, linf=1, epsilon=1.0, delta=1e-7)
    assert sel.threshold > 10 and not sel.values
    released = sum(
        bool(laplace_threshold({"solo": 1}, l0=1, linf=1, epsilon=1.0, delta=1e-7).values)
        for _ in range(2_000)
    )
    assert released == 0
