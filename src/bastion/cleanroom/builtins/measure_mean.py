"""``mean``: the mean of a declared measure per group (clamped), with its interval.

Half the epsilon goes to a noisy row count (L1 G*R*W), half to a noisy sum of the values
*centred* on the clamp range's midpoint (L1 G*R*half-range), so the sum's noise is half what
the raw values would need. Private keys: selection on the same row counts."""

from __future__ import annotations

from bastion.cleanroom.plan import Aggregates, QueryPlan, QueryTemplate, register_template
from bastion.cleanroom.release import (
    Releaser,
    ResultRow,
    group,
    laplace_accuracy,
    public_keys,
    ratio_interval,
)


class MeasureMean(QueryTemplate):
    name = "mean"
    summary = "mean of a measure (clamped)"
    parameters = frozenset({"max_rows_per_group", "measure", "clamp"})

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        return Aggregates(total=True)

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        """Noisy row count and noisy sum of the values *centred* on the clamp range's midpoint.

        A user's rows in a group shifted by the midpoint move the centred sum by at most
        R x half the range, half of what the raw values could move it by, so the sum's noise is
        halved for the same epsilon (Tumult Analytics' average does the same). The count and
        the centred sum are the bounded data's own aggregates (``rows_w`` is a multiple of W
        per user), so the shift costs no privacy; mean = midpoint + centred sum / count.
        """
        p = r.plan
        assert p.measure is not None
        half = p.epsilon / 2
        lo_u, hi_u = p.clamp_units
        mid = (lo_u + hi_u) // 2
        spread = max(hi_u - mid, mid - lo_u)
        unit, W = p.measure.unit, r.W
        lo, hi = lo_u * unit, hi_u * unit
        if p.private_keys:
            keys, counts, c_scale = r.select("rows_w", r.R * W, half)
            den_raw = [counts[k] for k in keys]
        else:
            keys = public_keys(p)
            c = r.vector(keys, "rows_w", r.G * r.R * W, half)
            den_raw, c_scale = list(c.values), c.scale
        centred = [r.value(k, "total") - mid * (r.value(k, "rows_w") // W) for k in keys]
        s = r.noised(centred, "total-centred", r.G * r.R * spread, p.epsilon - half)
        a2 = r.alpha / 2
        c_acc, s_acc = laplace_accuracy(c_scale, a2) / W, laplace_accuracy(s.scale, a2) * unit
        centre = mid * unit
        rows = []
        for key, d, num in zip(keys, den_raw, s.values, strict=True):
            den = d / W
            total = num * unit
            value = min(max(centre + total / den, lo), hi) if den > 0 else None
            ci = ratio_interval(total, s_acc, den, c_acc, lo, hi, offset=centre)
            scale = s.scale * unit / max(den, 1.0)
            rows.append(ResultRow(group(p, key), "mean", value, scale, *ci))
        return rows, len(keys)


TEMPLATE: QueryTemplate = register_template(MeasureMean())
