"""The release layer on its own: calibration against OpenDP's maps, shapes, intervals."""

from __future__ import annotations

import pytest

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoomConfig, compile_plan, release
from bastion.cleanroom.engines import BoundedAggregate, GroupAggregate
from bastion.cleanroom.release import _quantile, laplace, laplace_accuracy, laplace_threshold
from bastion.cleanroom.templates import parse_request

CAT, CFG = default_catalog(), CleanRoomConfig()


def plan(**req: object) -> object:
    return compile_plan(parse_request(req), CAT, CFG)


def test_laplace_is_calibrated_by_opendp_map() -> None:
    noisy = laplace([10, 20, 30], l1=4, epsilon=0.5)
    assert noisy.scale == 8 and noisy.epsilon <= 0.5 + 1e-12 and len(noisy.values) == 3
    assert all(isinstance(v, int) for v in noisy.values), "discrete noise on integers"


def test_threshold_meets_delta() -> None:
    sel = laplace_threshold({"big": 10_000, "tiny": 1}, l0=2, linf=1, epsilon=1.0, delta=1e-7)
    assert sel.delta <= 1e-7 and sel.epsilon <= 1.0 + 1e-12
    assert "big" in sel.values and "tiny" not in sel.values


def test_public_groups_cover_the_domain_even_when_empty() -> None:
    p = plan(template="count", epsilon=1.0, group_by=["region"])
    agg = BoundedAggregate({("uk",): GroupAggregate(5_000_000, 900, 0, 0)})
    rel = release(p, agg)  # type: ignore[arg-type]
    assert rel.keys_released == 8 and len(rel.rows) == 8
    uk = next(r for r in rel.rows if r.group == {"region": "uk"})
    assert uk.value == pytest.approx(5_000, abs=200)
    assert uk.noise_scale == pytest.approx(10.0)  # R/eps rows with R = 10
    half = laplace_accuracy(10_000.0, 0.05) / 1000
    assert uk.ci_high - uk.value == pytest.approx(half)  # type: ignore[operator]


def test_private_keys_only_through_selection() -> None:
    p = plan(template="count", epsilon=1.0, group_by=["campaign_id"], max_rows_per_group=1)
    agg = BoundedAggregate(
        {
            ("c0001",): GroupAggregate(9_000_000, 9_000, 0, 0),
            ("c0002",): GroupAggregate(1_000, 1, 0, 0),
        }
    )
    for _ in range(50):
        rel = release(p, agg)  # type: ignore[arg-type]
        assert [r.group["campaign_id"] for r in rel.rows] == ["c0001"]
        assert rel.delta_spent <= 1e-7 and rel.epsilon_spent <= 1.0 + 1e-9


def test_composed_epsilon_never_exceeds_the_plan() -> None:
    for req in (
        {"template": "mean", "measure": "watch_time_s", "group_by": ["age_band"]},
        {"template": "ctr", "group_by": ["campaign_id"]},
        {"template": "quantiles", "measure": "watch_time_s", "group_by": ["region"], "bins": 10},
        {"template": "sum", "measure": "revenue_usd", "group_by": ["campaign_id", "day"]},
    ):
        p = plan(epsilon=0.7, **req)
        rel = release(p, BoundedAggregate())  # type: ignore[arg-type]
        assert rel.epsilon_spent <= 0.7 * (1 + 1e-9), req


def test_quantile_on_the_grid_with_interval() -> None:
    # 10 bins of width 1 over [0, 10); a point mass at 3.0 holds the median.
    hist = [100, 100, 100, 400, 100, 100, 100, 0, 0, 0]
    value, (low, high) = _quantile(hist, 0.5, 0.0, 1.0, err=0.0)
    assert value == 3.0 and low == 3.0 and high == 4.0
    value, (low, high) = _quantile(hist, 0.5, 0.0, 1.0, err=150.0)
    assert low is not None and high is not None and low <= 3.0 <= high and high - low > 1
    assert _quantile([0] * 10, 0.5, 0.0, 1.0, 0.0)[0] is None


def test_mean_noises_the_sum_centred_on_the_clamp_midpoint() -> None:
    # Clamp [0, 300] s in 0.1 s units: the centred sum's L1 is G * R * 1500 units, half the raw
    # values' G * R * 3000, so the sum's noise is half what an uncentred sum would need.
    p = plan(
        template="mean",
        epsilon=1.0,
        measure="watch_time_s",
        group_by=["age_band"],
        clamp=[0, 300],
        max_rows_per_group=5,
    )
    rows, mean_units = 200_000, 1_200  # 200,000 bounded rows averaging 120.0 s
    agg = BoundedAggregate({("25-34",): GroupAggregate(rows * 1000, 50_000, rows * mean_units, 0)})
    rel = release(p, agg)  # type: ignore[arg-type]
    assert any("total-centred, scale=15000" in m for m in rel.mechanisms), rel.mechanisms
    assert rel.epsilon_spent <= 1.0 + 1e-9
    row = next(r for r in rel.rows if r.group == {"age_band": "25-34"})
    assert row.value == pytest.approx(120.0, abs=1.0)
    assert row.ci_low is not None and row.ci_high is not None
    assert row.ci_low <= 120.0 <= row.ci_high and row.ci_high - row.ci_low < 5
    # The noise scale reported is the sum's, per row: 15000 units * 0.1 s / 200,000 rows.
    assert row.noise_scale == pytest.approx(15_000 * 0.1 / rows, rel=0.01)
