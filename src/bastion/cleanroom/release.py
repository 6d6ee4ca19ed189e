"""The release layer: the only place noise is added, and only with OpenDP's mechanisms.

Both engines hand this layer the same bounded integer aggregates. It releases them with
OpenDP's discrete Laplace (vector) mechanism under pure epsilon-DP, and releases groups keyed by
private values (campaigns) only through OpenDP's Laplace threshold mechanism (DP partition
selection, which costs a small delta). Every calibration is checked against the mechanism's
own privacy map: the epsilon we charge is at least what OpenDP says was spent.

Sensitivities (per user, after bounding with G groups and R rows of weight W):

===============  =================  ==============  ==========
aggregate        per group (Linf)   all groups (L1)  groups (L0)
===============  =================  ==============  ==========
rows (count)     R*W                G*R*W           G
users            1                  G               G
total (sum)      R*max|v|           G*R*max|v|      G
clicks+impr.     R*W (jointly)      G*R*W           G
histogram        R*W (all bins)     G*R*W           G
===============  =================  ==============  ==========
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import opendp.prelude as dp

from bastion.cleanroom.engines import BoundedAggregate, GroupKey
from bastion.cleanroom.templates import QueryPlan, Template

dp.enable_features("contrib")

_EPS_SLACK = 1e-9


class CalibrationError(RuntimeError):
    """OpenDP's privacy map disagrees with the calibration: release nothing."""


@dataclass(frozen=True)
class Noisy:
    values: tuple[int, ...]
    scale: float
    epsilon: float


@functools.lru_cache(maxsize=256)
def _laplace_mechanism(l1: int, epsilon: float) -> tuple[Any, float, float]:
    """The calibrated measurement, its scale, and the epsilon OpenDP's own map gives it."""
    scale = l1 / epsilon
    space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"))
    meas = dp.m.make_laplace(*space, scale=scale)
    spent = float(meas.map(l1))  # type: ignore[no-untyped-call]
    if spent > epsilon * (1 + _EPS_SLACK):
        raise CalibrationError(f"laplace map {spent} exceeds {epsilon}")
    return meas, scale, spent


def laplace(values: Sequence[int], l1: int, epsilon: float) -> Noisy:
    """OpenDP's discrete Laplace on an integer vector whose L1 sensitivity is ``l1``."""
    meas, scale, spent = _laplace_mechanism(l1, epsilon)
    out = meas(list(values)) if values else []
    return Noisy(tuple(int(v) for v in out), scale, spent)


@dataclass(frozen=True)
class Selected:
    values: dict[str, int]
    scale: float
    threshold: int
    epsilon: float
    delta: float


def laplace_threshold(
    counts: dict[str, int], *, l0: int, linf: int, epsilon: float, delta: float
) -> Selected:
    """OpenDP's Laplace threshold mechanism: noisy counts, and only keys above a noisy bar.

    The threshold is the smallest integer for which OpenDP's privacy map gives a delta within
    ``delta``; keys a user could create alone are released with probability at most delta.
    """
    meas, scale, threshold, spent_eps, spent_delta = _threshold_mechanism(l0, linf, epsilon, delta)
    released = meas(counts) if counts else {}
    return Selected(
        {k: int(v) for k, v in released.items()}, scale, threshold, spent_eps, spent_delta
    )


@functools.lru_cache(maxsize=256)
def _threshold_mechanism(
    l0: int, linf: int, epsilon: float, delta: float
) -> tuple[Any, float, int, float, float]:
    l1 = l0 * linf
    scale = l1 / epsilon
    space = (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l01inf_distance(dp.absolute_distance(T="i64")),
    )

    def make(threshold: int) -> Any:
        return dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)

    lo, hi = linf, max(linf * 2, 2)
    while make(hi).map((l0, l1, linf))[1] > delta:
        lo, hi = hi, hi * 2
        if hi > 1 << 60:
            raise CalibrationError("no threshold meets the delta")
    while lo < hi:
        mid = (lo + hi) // 2
        if make(mid).map((l0, l1, linf))[1] <= delta:
            hi = mid
        else:
            lo = mid + 1
    meas = make(hi)
    spent_eps, spent_delta = (float(x) for x in meas.map((l0, l1, linf)))
    if spent_eps > epsilon * (1 + _EPS_SLACK) or spent_delta > delta:
        raise CalibrationError("threshold map exceeds the budget")
    return meas, scale, hi, spent_eps, spent_delta


@functools.lru_cache(maxsize=1024)
def laplace_accuracy(scale: float, alpha: float) -> float:
    """Half-width that discrete Laplace noise of this scale exceeds with probability alpha."""
    return float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha))


@dataclass(frozen=True)
class ResultRow:
    group: dict[str, str]
    statistic: str
    value: float | None
    noise_scale: float
    ci_low: float | None
    ci_high: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "statistic": self.statistic,
            "value": self.value,
            "noise_scale": self.noise_scale,
            "ci": [self.ci_low, self.ci_high],
        }


@dataclass(frozen=True)
class Release:
    rows: list[ResultRow]
    keys_released: int
    epsilon_spent: float
    delta_spent: float
    confidence: float
    mechanisms: list[str] = field(default_factory=list)


def _key_text(key: GroupKey) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def _group(plan: QueryPlan, key: GroupKey) -> dict[str, str]:
    return dict(zip(plan.group_by, key, strict=True))


def _public_keys(plan: QueryPlan) -> list[GroupKey]:
    domains = [d for d in plan.domains if d is not None]
    return [tuple(k) for k in itertools.product(*domains)]


def _ratio_interval(
    num: float,
    num_acc: float,
    den: float,
    den_acc: float,
    lo: float,
    hi: float,
    *,
    offset: float = 0.0,
) -> tuple[float, float]:
    """Interval for offset + num/den from intervals on num (any sign) and den, in [lo, hi]."""
    d_lo, d_hi = den - den_acc, den + den_acc
    if d_lo <= 0:
        return lo, hi
    # num/den is monotone in each argument on a box with den > 0: the corners bound it.
    corners = [n / d for n in (num - num_acc, num + num_acc) for d in (d_lo, d_hi)]
    return max(lo, offset + min(corners)), min(hi, offset + max(corners))


class _Releaser:
    def __init__(self, plan: QueryPlan, agg: BoundedAggregate, selection_share: float) -> None:
        self.plan = plan
        self.selection_share = selection_share
        self.agg = agg
        self.alpha = 1.0 - plan.confidence
        self.eps_left = plan.epsilon
        self.eps_spent = 0.0
        self.delta_spent = 0.0
        self.mechanisms: list[str] = []
        G, R, W = plan.max_groups, plan.max_rows, plan.row_weight
        self.G, self.R, self.W = G, R, W
        m = plan.measure
        self.max_v = max(abs(plan.clamp_units[0]), abs(plan.clamp_units[1])) if m else 0

    def _charge(self, eps: float, delta: float = 0.0) -> None:
        self.eps_spent += eps
        self.delta_spent += delta

    def value(self, key: GroupKey, name: str) -> int:
        g = self.agg.groups.get(key)
        if g is None:
            return 0
        return int(getattr(g, name))

    def vector(self, keys: list[GroupKey], name: str, l1: int, eps: float) -> Noisy:
        return self.noised([self.value(k, name) for k in keys], name, l1, eps)

    def noised(self, values: list[int], name: str, l1: int, eps: float) -> Noisy:
        noisy = laplace(values, l1, eps)
        self._charge(noisy.epsilon)
        self.mechanisms.append(f"discrete_laplace({name}, scale={noisy.scale:g})")
        return noisy

    def select(
        self, name: str, linf: int, eps: float
    ) -> tuple[list[GroupKey], dict[GroupKey, int], float]:
        """DP partition selection over the keys present in the bounded data."""
        counts = {_key_text(k): self.value(k, name) for k in self.agg.groups}
        chosen = laplace_threshold(counts, l0=self.G, linf=linf, epsilon=eps, delta=self.plan.delta)
        self._charge(chosen.epsilon, chosen.delta)
        self.mechanisms.append(
            f"laplace_threshold({name}, scale={chosen.scale:g}, threshold={chosen.threshold})"
        )
        keys = sorted(tuple(json.loads(k)) for k in chosen.values)
        return keys, {tuple(json.loads(k)): v for k, v in chosen.values.items()}, chosen.scale

    # ---- templates --------------------------------------------------------------------------

    def run(self) -> Release:
        p = self.plan
        method = {
            Template.COUNT: self.count,
            Template.DISTINCT_USERS: self.distinct_users,
            Template.SUM: self.sum,
            Template.MEAN: self.mean,
            Template.QUANTILES: self.quantiles,
            Template.CTR: self.ctr,
        }[p.template]
        rows, keys = method()
        if self.eps_spent > p.epsilon * (1 + _EPS_SLACK):
            raise CalibrationError("composed epsilon exceeds the query's epsilon")
        return Release(
            rows=rows,
            keys_released=keys,
            epsilon_spent=self.eps_spent,
            delta_spent=self.delta_spent,
            confidence=p.confidence,
            mechanisms=self.mechanisms,
        )

    def _split(self) -> tuple[float, float]:
        share = self.plan.epsilon * self.selection_share
        return share, self.plan.epsilon - share

    def _counts(self, name: str, linf: int, unit: float, label: str) -> tuple[list[ResultRow], int]:
        p = self.plan
        if p.private_keys:
            keys, noisy, scale = self.select(name, linf, p.epsilon)
            values = [noisy[k] for k in keys]
        else:
            keys = _public_keys(p)
            n = self.vector(keys, name, self.G * linf, p.epsilon)
            values, scale = list(n.values), n.scale
        acc = laplace_accuracy(scale, self.alpha)
        rows = []
        for key, raw in zip(keys, values, strict=True):
            v = max(raw, 0) / unit
            rows.append(
                ResultRow(
                    _group(p, key), label, v, scale / unit, max(0.0, v - acc / unit), v + acc / unit
                )
            )
        return rows, len(keys)

    def count(self) -> tuple[list[ResultRow], int]:
        return self._counts("rows_w", self.R * self.W, float(self.W), "count")

    def distinct_users(self) -> tuple[list[ResultRow], int]:
        return self._counts("users", 1, 1.0, "distinct_users")

    def _keys_for_statistic(self) -> tuple[list[GroupKey], float]:
        """Public groups from the domains; private ones by selection on distinct users."""
        if not self.plan.private_keys:
            return _public_keys(self.plan), self.plan.epsilon
        sel_eps, rest = self._split()
        keys, _, _ = self.select("users", 1, sel_eps)
        return keys, rest

    def sum(self) -> tuple[list[ResultRow], int]:
        p = self.plan
        assert p.measure is not None
        keys, eps = self._keys_for_statistic()
        n = self.vector(keys, "total", self.G * self.R * self.max_v, eps)
        unit = p.measure.unit
        acc = laplace_accuracy(n.scale, self.alpha) * unit
        rows = [
            ResultRow(
                _group(p, k),
                "sum",
                max(v, 0) * unit,
                n.scale * unit,
                max(0.0, max(v, 0) * unit - acc),
                max(v, 0) * unit + acc,
            )
            for k, v in zip(keys, n.values, strict=True)
        ]
        return rows, len(keys)

    def mean(self) -> tuple[list[ResultRow], int]:
        """Noisy row count and noisy sum of the values *centred* on the clamp range's midpoint.

        A user's rows in a group shifted by the midpoint move the centred sum by at most
        R x half the range, half of what the raw values could move it by, so the sum's noise is
        halved for the same epsilon (Tumult Analytics' average does the same). The count and
        the centred sum are the bounded data's own aggregates (``rows_w`` is a multiple of W
        per user), so the shift costs no privacy; mean = midpoint + centred sum / count.
        """
        p = self.plan
        assert p.measure is not None
        half = p.epsilon / 2
        lo_u, hi_u = p.clamp_units
        mid = (lo_u + hi_u) // 2
        spread = max(hi_u - mid, mid - lo_u)
        unit, W = p.measure.unit, self.W
        lo, hi = lo_u * unit, hi_u * unit
        if p.private_keys:
            keys, counts, c_scale = self.select("rows_w", self.R * W, half)
            den_raw = [counts[k] for k in keys]
        else:
            keys = _public_keys(p)
            c = self.vector(keys, "rows_w", self.G * self.R * W, half)
            den_raw, c_scale = list(c.values), c.scale
        centred = [self.value(k, "total") - mid * (self.value(k, "rows_w") // W) for k in keys]
        s = self.noised(centred, "total-centred", self.G * self.R * spread, p.epsilon - half)
        a2 = self.alpha / 2
        c_acc, s_acc = laplace_accuracy(c_scale, a2) / W, laplace_accuracy(s.scale, a2) * unit
        centre = mid * unit
        rows = []
        for key, d, num in zip(keys, den_raw, s.values, strict=True):
            den = d / W
            total = num * unit
            value = min(max(centre + total / den, lo), hi) if den > 0 else None
            ci = _ratio_interval(total, s_acc, den, c_acc, lo, hi, offset=centre)
            scale = s.scale * unit / max(den, 1.0)
            rows.append(ResultRow(_group(p, key), "mean", value, scale, *ci))
        return rows, len(keys)

    def ctr(self) -> tuple[list[ResultRow], int]:
        p = self.plan
        keys, eps = self._keys_for_statistic()
        # Clicks and impressions of one user in one group sum to at most R rows, so the joint
        # vector has the same L1 sensitivity as one count: both get the whole epsilon.
        imps = [self.value(k, "rows_w") - self.value(k, "clicks_w") for k in keys]
        clicks = [self.value(k, "clicks_w") for k in keys]
        n = self.noised([*imps, *clicks], "[impressions, clicks]", self.G * self.R * self.W, eps)
        acc = laplace_accuracy(n.scale, self.alpha / 2)
        rows = []
        for i, key in enumerate(keys):
            imp, clk = n.values[i] / self.W, max(n.values[len(keys) + i], 0) / self.W
            value = min(max(clk / imp, 0.0), 1.0) if imp > 0 else None
            ci = _ratio_interval(clk, acc / self.W, imp, acc / self.W, 0.0, 1.0)
            scale = n.scale / self.W / max(imp, 1.0)
            rows.append(ResultRow(_group(p, key), "ctr", value, scale, *ci))
        return rows, len(keys)

    def quantiles(self) -> tuple[list[ResultRow], int]:
        p = self.plan
        assert p.measure is not None
        keys, eps = self._keys_for_statistic()
        B = p.bins
        flat: list[int] = []
        for key in keys:
            flat.extend(self.agg.histograms.get(key, (0,) * B))
        # Each user's rows in a group weigh at most R*W across all bins: one L1 for the lot.
        n = laplace(flat, self.G * self.R * self.W, eps)
        self._charge(n.epsilon)
        self.mechanisms.append(f"discrete_laplace(histogram[{B}], scale={n.scale:g})")
        lo_u, hi_u = p.clamp_units
        width = (hi_u - lo_u) / B * p.measure.unit
        lo = lo_u * p.measure.unit
        # A simultaneous bound on the noise of all B prefix sums (normal approximation of a sum
        # of discrete Laplace draws, union bound over prefixes); approximate, see CLEANROOM.md.
        z = NormalDist().inv_cdf(1 - self.alpha / (2 * B))
        prefix_err = z * math.sqrt(2 * B) * n.scale
        rows = []
        for i, key in enumerate(keys):
            hist = n.values[i * B : (i + 1) * B]
            for q in p.quantiles:
                value, ci = _quantile(hist, q, lo, width, prefix_err)
                rows.append(ResultRow(_group(p, key), f"p{q * 100:g}", value, width, ci[0], ci[1]))
        return rows, len(keys)


def _crossing(cum: list[float], target: float) -> int:
    """The first bin whose cumulative count reaches ``target`` (len(cum) when none does)."""
    for j, c in enumerate(cum):
        if c >= target:
            return j
    return len(cum)


def _quantile(
    hist: Sequence[int], q: float, lo: float, width: float, err: float
) -> tuple[float | None, tuple[float | None, float | None]]:
    """The q-quantile on the grid of bin edges, like the candidate lists of OpenDP and Tumult.

    The answer is the lower edge of the first bin where the noisy cumulative count reaches q of
    the noisy total; the interval runs from the lower edge of the bin reached at q*N - 2*err to
    the upper edge of the bin reached at q*N + 2*err.
    """
    cum = list(itertools.accumulate(float(h) for h in hist))
    total = cum[-1] if cum else 0.0
    top = lo + width * len(hist)
    if total <= 0:
        return None, (lo, top)
    value = min(lo + width * _crossing(cum, q * total), top)
    low = lo + width * _crossing(cum, q * total - 2 * err)
    high = lo + width * (_crossing(cum, q * total + 2 * err) + 1)
    return value, (max(lo, min(low, value)), min(top, max(high, value)))


def release(plan: QueryPlan, agg: BoundedAggregate, *, selection_share: float = 1 / 3) -> Release:
    """Release a template's answer from bounded aggregates with OpenDP noise."""
    return _Releaser(plan, agg, selection_share).run()
