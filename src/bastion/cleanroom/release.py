"""The release layer: the only place noise is added, and only with OpenDP's mechanisms.

Both engines hand this layer the same bounded integer aggregates. It releases them with
OpenDP's discrete Laplace (vector) mechanism under pure epsilon-DP, and releases groups keyed by
private values (campaigns) only through OpenDP's Laplace threshold mechanism (DP partition
selection, which costs a small delta). Every calibration is checked against the mechanism's
own privacy map: the epsilon we charge is at least what OpenDP says was spent.

Each template's ``release`` (``cleanroom/builtins/``) picks the mechanisms and calibrates them
to its sensitivities; ``Releaser`` gives it the aggregates and records every charge. The shipped
templates' sensitivities (per user, after bounding with G groups and R rows of weight W):

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import opendp.prelude as dp

from bastion.cleanroom.engines import BoundedAggregate, GroupKey
from bastion.cleanroom.plan import QueryPlan

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


def group(plan: QueryPlan, key: GroupKey) -> dict[str, str]:
    return dict(zip(plan.group_by, key, strict=True))


def public_keys(plan: QueryPlan) -> list[GroupKey]:
    domains = [d for d in plan.domains if d is not None]
    return [tuple(k) for k in itertools.product(*domains)]


def ratio_interval(
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


class Releaser:
    """One query's release: its bounded aggregates, the mechanisms (each charge recorded) and
    the helpers a template's ``release`` builds its answer from."""

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

    def charge(self, eps: float, delta: float = 0.0) -> None:
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
        self.charge(noisy.epsilon)
        self.mechanisms.append(f"discrete_laplace({name}, scale={noisy.scale:g})")
        return noisy

    def select(
        self, name: str, linf: int, eps: float
    ) -> tuple[list[GroupKey], dict[GroupKey, int], float]:
        """DP partition selection over the keys present in the bounded data."""
        counts = {_key_text(k): self.value(k, name) for k in self.agg.groups}
        chosen = laplace_threshold(counts, l0=self.G, linf=linf, epsilon=eps, delta=self.plan.delta)
        self.charge(chosen.epsilon, chosen.delta)
        self.mechanisms.append(
            f"laplace_threshold({name}, scale={chosen.scale:g}, threshold={chosen.threshold})"
        )
        keys = sorted(tuple(json.loads(k)) for k in chosen.values)
        return keys, {tuple(json.loads(k)): v for k, v in chosen.values.items()}, chosen.scale

    # ---- what templates build their release from --------------------------------------------

    def run(self) -> Release:
        p = self.plan
        rows, keys = p.template.release(self)
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

    def split(self) -> tuple[float, float]:
        """The query's epsilon as (partition selection's share, the rest)."""
        share = self.plan.epsilon * self.selection_share
        return share, self.plan.epsilon - share

    def counts(self, name: str, linf: int, unit: float, label: str) -> tuple[list[ResultRow], int]:
        """One noisy count per group of the aggregate ``name`` (per-group sensitivity ``linf``),
        in ``unit``s; private keys only through selection on the same counts."""
        p = self.plan
        if p.private_keys:
            keys, noisy, scale = self.select(name, linf, p.epsilon)
            values = [noisy[k] for k in keys]
        else:
            keys = public_keys(p)
            n = self.vector(keys, name, self.G * linf, p.epsilon)
            values, scale = list(n.values), n.scale
        acc = laplace_accuracy(scale, self.alpha)
        rows = []
        for key, raw in zip(keys, values, strict=True):
            v = max(raw, 0) / unit
            rows.append(
                ResultRow(
                    group(p, key), label, v, scale / unit, max(0.0, v - acc / unit), v + acc / unit
                )
            )
        return rows, len(keys)

    def keys_for_statistic(self) -> tuple[list[GroupKey], float]:
        """Public groups from the domains; private ones by selection on distinct users. With
        the epsilon left for the statistic."""
        if not self.plan.private_keys:
            return public_keys(self.plan), self.plan.epsilon
        sel_eps, rest = self.split()
        keys, _, _ = self.select("users", 1, sel_eps)
        return keys, rest


def _crossing(cum: list[float], target: float) -> int:
    """The first bin whose cumulative count reaches ``target`` (len(cum) when none does)."""
    for j, c in enumerate(cum):
        if c >= target:
            return j
    return len(cum)


def quantile_on_grid(
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
    return Releaser(plan, agg, selection_share).run()


# The name the release tests know it by.
_quantile = quantile_on_grid
