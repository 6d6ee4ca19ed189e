"""``ctr``: click-through rate, ad clicks over ad impressions, per group.

The template fixes the event type (clicks and impressions only), so a request may neither
group nor filter by it. One user's clicks and impressions in a group sum to at most R rows,
so the joint vector [impressions, clicks] has the L1 sensitivity of one count (G*R*W) and
takes the whole epsilon. Private keys: selection on distinct users first."""

from __future__ import annotations

from dataclasses import replace

from bastion.catalog import DatasetSpec
from bastion.cleanroom.config import CleanRoomConfig
from bastion.cleanroom.plan import (
    Aggregates,
    QueryPlan,
    QueryRequest,
    QueryTemplate,
    domain_text,
    register_template,
)
from bastion.cleanroom.release import (
    Releaser,
    ResultRow,
    group,
    laplace_accuracy,
    ratio_interval,
)
from bastion.errors import InputError

CTR_CLICK = "ad_click"
CTR_IMPRESSION = "ad_impression"
EVENT_TYPE = "event_type"


class ClickThroughRate(QueryTemplate):
    name = "ctr"
    summary = "click-through rate: ad clicks / ad impressions"
    parameters = frozenset({"max_rows_per_group"})
    fixed_columns = frozenset({EVENT_TYPE})

    def finish(
        self,
        plan: QueryPlan,
        request: QueryRequest,
        dataset: DatasetSpec,
        config: CleanRoomConfig,
    ) -> QueryPlan:
        if not {CTR_CLICK, CTR_IMPRESSION} <= set(domain_text(dataset, EVENT_TYPE)):
            raise InputError("the catalog declares no ad click/impression event types")
        return replace(plan, where=(*plan.where, (EVENT_TYPE, (CTR_CLICK, CTR_IMPRESSION))))

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        return Aggregates(flag=(EVENT_TYPE, CTR_CLICK))

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        p = r.plan
        keys, eps = r.keys_for_statistic()
        # Clicks and impressions of one user in one group sum to at most R rows, so the joint
        # vector has the same L1 sensitivity as one count: both get the whole epsilon.
        imps = [r.value(k, "rows_w") - r.value(k, "clicks_w") for k in keys]
        clicks = [r.value(k, "clicks_w") for k in keys]
        n = r.noised([*imps, *clicks], "[impressions, clicks]", r.G * r.R * r.W, eps)
        acc = laplace_accuracy(n.scale, r.alpha / 2)
        rows = []
        for i, key in enumerate(keys):
            imp, clk = n.values[i] / r.W, max(n.values[len(keys) + i], 0) / r.W
            value = min(max(clk / imp, 0.0), 1.0) if imp > 0 else None
            ci = ratio_interval(clk, acc / r.W, imp, acc / r.W, 0.0, 1.0)
            scale = n.scale / r.W / max(imp, 1.0)
            rows.append(ResultRow(group(p, key), "ctr", value, scale, *ci))
        return rows, len(keys)


TEMPLATE: QueryTemplate = register_template(ClickThroughRate())
