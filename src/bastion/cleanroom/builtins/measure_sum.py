"""``sum``: the sum of a declared measure per group, each value clamped to the request's range.

Sensitivity: one user moves a group's total by at most R*max|v| (v in the measure's units,
after clamping), in at most G groups: L1 G*R*max|v|. Private keys: selection on distinct users
first (``selection_share`` of epsilon), the rest for the sums."""

from __future__ import annotations

from bastion.cleanroom.plan import Aggregates, QueryPlan, QueryTemplate, register_template
from bastion.cleanroom.release import Releaser, ResultRow, group, laplace_accuracy


class MeasureSum(QueryTemplate):
    name = "sum"
    summary = "sum of a measure (clamped)"
    parameters = frozenset({"max_rows_per_group", "measure", "clamp"})

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        return Aggregates(total=True)

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        p = r.plan
        assert p.measure is not None
        keys, eps = r.keys_for_statistic()
        n = r.vector(keys, "total", r.G * r.R * r.max_v, eps)
        unit = p.measure.unit
        acc = laplace_accuracy(n.scale, r.alpha) * unit
        rows = [
            ResultRow(
                group(p, k),
                "sum",
                max(v, 0) * unit,
                n.scale * unit,
                max(0.0, max(v, 0) * unit - acc),
                max(v, 0) * unit + acc,
            )
            for k, v in zip(keys, n.values, strict=True)
        ]
        return rows, len(keys)


TEMPLATE: QueryTemplate = register_template(MeasureSum())
