"""``quantiles``: quantiles of a declared measure per group (median and p90 by default).

The engines return per-group histograms of the clamped measure over ``bins`` equal bins; one
user's rows in a group weigh at most R*W across all bins, in at most G groups, so the whole
histogram vector has L1 sensitivity G*R*W. Each quantile is read off the noisy cumulative
histogram on the grid of bin edges. Private keys: selection on distinct users first."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist
from typing import Any

from bastion.catalog import DatasetSpec
from bastion.cleanroom.config import CleanRoomConfig
from bastion.cleanroom.plan import (
    Aggregates,
    QueryPlan,
    QueryRequest,
    QueryTemplate,
    register_template,
)
from bastion.cleanroom.release import (
    Releaser,
    ResultRow,
    group,
    laplace,
    quantile_on_grid,
)
from bastion.errors import InputError


class Quantiles(QueryTemplate):
    name = "quantiles"
    summary = "quantiles of a measure, e.g. median and p90 (clamped)"
    parameters = frozenset({"max_rows_per_group", "measure", "clamp", "quantiles", "bins"})

    def finish(
        self,
        plan: QueryPlan,
        request: QueryRequest,
        dataset: DatasetSpec,
        config: CleanRoomConfig,
    ) -> QueryPlan:
        quantiles = tuple(request.quantiles or (0.5, 0.9))
        for q in quantiles:
            if not 0 < q < 1:
                raise InputError("quantiles must be strictly between 0 and 1", field="quantiles")
        bins = request.bins if request.bins is not None else config.default_quantile_bins
        width = plan.clamp_units[1] - plan.clamp_units[0]
        if not 2 <= bins <= min(config.max_quantile_bins, width):
            raise InputError(
                f"bins must be between 2 and {min(config.max_quantile_bins, width)}",
                field="bins",
            )
        return replace(plan, quantiles=quantiles, bins=bins)

    def recorded(self, plan: QueryPlan) -> dict[str, Any]:
        return {"quantiles": list(plan.quantiles), "bins": plan.bins}

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        return Aggregates(histogram=True)

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        p = r.plan
        assert p.measure is not None
        keys, eps = r.keys_for_statistic()
        B = p.bins
        flat: list[int] = []
        for key in keys:
            flat.extend(r.agg.histograms.get(key, (0,) * B))
        # Each user's rows in a group weigh at most R*W across all bins: one L1 for the lot.
        n = laplace(flat, r.G * r.R * r.W, eps)
        r.charge(n.epsilon)
        r.mechanisms.append(f"discrete_laplace(histogram[{B}], scale={n.scale:g})")
        lo_u, hi_u = p.clamp_units
        width = (hi_u - lo_u) / B * p.measure.unit
        lo = lo_u * p.measure.unit
        # A simultaneous bound on the noise of all B prefix sums (normal approximation of a sum
        # of discrete Laplace draws, union bound over prefixes); approximate, see CLEANROOM.md.
        z = NormalDist().inv_cdf(1 - r.alpha / (2 * B))
        prefix_err = z * math.sqrt(2 * B) * n.scale
        rows = []
        for i, key in enumerate(keys):
            hist = n.values[i * B : (i + 1) * B]
            for q in p.quantiles:
                value, ci = quantile_on_grid(hist, q, lo, width, prefix_err)
                rows.append(ResultRow(group(p, key), f"p{q * 100:g}", value, width, ci[0], ci[1]))
        return rows, len(keys)


TEMPLATE: QueryTemplate = register_template(Quantiles())
