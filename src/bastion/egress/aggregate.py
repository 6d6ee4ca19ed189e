"""Aggregate flows: differentially private counts and sums by public dimensions.

An ``aggregate`` flow delivers no record of anyone. Each run reads the flow's fields of the
whole dataset (a full extract, recorded like a records flow's) and releases, for every group
of the cross product of the declared ``group_by`` domains, a noisy count and noisy clamped
sums, with the clean room's release layer (OpenDP's discrete Laplace, ``cleanroom.release``).
Nothing here draws a random number: the noise is OpenDP's.

How one run is made private (neighbouring datasets differ by one subject, all their records):

1. **filter**: the flow's row filter; a record whose group value is outside its declared
   domain (or null) falls in no group and is left out. Both depend on the record alone.
2. **bound**: each subject keeps at most ``max_records_per_subject`` (m) records. Which ones
   is deterministic but unpredictable: the m of smallest *rank*, a keyed BLAKE2b (hashlib)
   of the record key under a key of the flow's token scope (``rank_key``: the flow's own
   token of a fixed label). Not "first seen": the change feed's order is time, and the first
   m would always be a heavy user's oldest records (their recent groups would never count).
   A keyed hash is a uniform sample of the subject's records that no one without the flow's
   key can predict or steer, and it is the same sample in every run, so rerunning a flow
   does not sample a heavy subject anew. (BLAKE2b rather than the HMAC-SHA256 of
   ``FlowTokens.row``: it is a keyed PRF too, and three times cheaper; only records of
   subjects over the bound are ranked, which at 20 records a subject is most of them.)
3. **clamp**: each summed value is clamped to its declared ``[lo, hi]`` and rounded to a
   fixed-point unit (the clean room's declared unit for that measure when it has one, so
   both give the same integers; else about five significant digits of the bound). A missing
   or NaN value adds 0 to the sum (the record still counts).
4. **group** over the declared domains only: which groups exist never depends on the data,
   and every group is released, an empty one too.
5. **release**: one subject's at most m records each add 1 to one group's count, so the
   count vector has L1 sensitivity m; each adds at most ``max(|lo|, |hi|)`` (in units) to one
   group's sum, so a sum vector has L1 sensitivity ``m * max(|lo|, |hi|)``. The number of
   groups does not enter. ``epsilon_per_run`` is split evenly between the released
   statistics (the count and each sum: basic composition), and OpenDP's own privacy map
   checks each calibration (``CalibrationError`` otherwise: nothing is released).

A run's epsilon is charged to the flow's own persistent budget in the manifest's commit
(``charge_budget``, called from the runner's side write): the budget is spent exactly when
the release is recorded. Every scheduled run releases, whether or not the data changed:
whether a run happens must not depend on any one subject's records.

The output is one chunk table in the chunk schema: ``_row`` (the flow's token of the group's
key, so a recipient can upsert per group), ``_op`` = ``upsert``, the ``group_by`` columns,
then ``count`` and ``count_ci95`` (int64, double), and ``sum_<field>`` and
``sum_<field>_ci95`` (double) for each sum. A ``_ci95`` column is the half-width that the
noise exceeds with probability 5% (the same for every group of a statistic). Released values
are unbiased: a count may be negative; clip at 0 for display, not before adding groups up.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bastion.catalog import DatasetSpec, FieldSpec
from bastion.catalog.model import DomainValue
from bastion.cleanroom.config import DEFAULT_MEASURES
from bastion.cleanroom.release import CalibrationError, laplace, laplace_accuracy
from bastion.egress import payload
from bastion.egress.model import Flow, Keep, Truncate
from bastion.egress.store import BudgetExhausted, EgressStore
from bastion.egress.tokens import FlowTokens
from bastion.egress.transforms import OP, ROW, UPSERT, row_mask, source_type, to_column
from bastion.errors import BastionError, InputError
from bastion.store import Cursor
from bastion.vault.snapshot import SnapshotBatch

COUNT = "count"
CI_SUFFIX = "_ci95"
CONFIDENCE = 0.95
MAX_GROUPS = 100_000  # the cross product of the domains: one row each, every run
_RANK_LABEL = "bastion/egress-aggregate-rank/v1"
_SIGNIFICANT = 5  # fixed-point digits of a sum's bound when the clean room declares no unit


class AggregateBudgetExhausted(BastionError):
    """The flow's own epsilon budget cannot pay for another run: nothing is recorded."""

    exit_code = 2


@dataclass(frozen=True)
class Dimension:
    """One ``group_by`` field and its declared domain, in the catalog's order."""

    name: str
    spec: FieldSpec
    members: tuple[DomainValue, ...]

    def positions(self, column: pa.Array) -> np.ndarray:
        """Each value's position in the domain; -1 for a value outside it, or null."""
        members = pa.array(list(self.members), source_type(self.spec))
        found = pc.index_in(column.cast(members.type), value_set=members)
        return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), np.int64)


@dataclass(frozen=True)
class SumSpec:
    """One summed field: clamped to ``[lo, hi]``, in integer multiples of ``unit``."""

    name: str
    spec: FieldSpec
    low: float
    high: float
    unit: float
    transform: Keep | Truncate

    @property
    def low_units(self) -> int:
        return round(self.low / self.unit)

    @property
    def high_units(self) -> int:
        return round(self.high / self.unit)

    @property
    def max_units(self) -> int:
        """The most one record moves the sum by, in units (the L-infinity of a record)."""
        return max(abs(self.low_units), abs(self.high_units))

    @property
    def column(self) -> str:
        return f"sum_{self.name}"


@dataclass(frozen=True)
class AggregatePlan:
    """Everything a run releases, fixed by the declaration and the catalog (never the data)."""

    flow: str
    dimensions: tuple[Dimension, ...]
    sums: tuple[SumSpec, ...]
    count: bool
    max_records: int
    epsilon: float

    @property
    def groups(self) -> int:
        return math.prod(len(d.members) for d in self.dimensions)

    @property
    def statistics(self) -> int:
        return int(self.count) + len(self.sums)

    @property
    def epsilon_each(self) -> float:
        """The even split of the run's epsilon between its statistics."""
        return self.epsilon / self.statistics

    @property
    def count_l1(self) -> int:
        return self.max_records

    def sum_l1(self, s: SumSpec) -> int:
        return self.max_records * s.max_units

    def keys(self) -> list[tuple[DomainValue, ...]]:
        """Every group, in the domains' order (the last dimension varies fastest)."""
        return list(itertools.product(*(d.members for d in self.dimensions)))


def plan_aggregate(flow: Flow, ds: DatasetSpec) -> AggregatePlan:
    """The release plan of an aggregate flow. Raises InputError naming the flow's field for
    what the load-time checks do not already refuse."""
    agg = flow.aggregate
    if flow.kind != "aggregate" or agg is None:
        raise InputError(f"flow {flow.name!r} is not an aggregate flow", field="kind")
    if agg.max_records_per_subject is None:
        raise InputError(
            f"flow {flow.name!r}: an aggregate needs max_records_per_subject",
            field="aggregate.max_records_per_subject",
        )
    dims = []
    for name in agg.group_by:
        spec = ds.field(name)
        where = f"aggregate.group_by.{name}"
        if spec.domain is None or name not in ds.public_dimensions:
            raise InputError(
                f"flow {flow.name!r}: groups only by public dimensions with domains", field=where
            )
        if not isinstance(flow.fields.get(name), Keep):
            raise InputError(
                f"flow {flow.name!r}: a group_by field is declared 'keep' (its domain is the "
                "catalog's, untransformed)",
                field=f"fields.{name}",
            )
        dims.append(Dimension(name, spec, tuple(spec.domain.members())))
    sums = []
    for name, (low, high) in sorted(agg.sums.items()):
        transform = flow.fields.get(name)
        if not isinstance(transform, Keep | Truncate):
            raise InputError(
                f"flow {flow.name!r}: a summed field is declared 'keep' or 'truncate'",
                field=f"fields.{name}",
            )
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(
                f"flow {flow.name!r}: a sum needs finite bounds, lower < upper",
                field=f"aggregate.sums.{name}",
            )
        sums.append(
            SumSpec(name, ds.field(name), low, high, sum_unit(ds.name, name, low, high), transform)
        )
    plan = AggregatePlan(
        flow.name, tuple(dims), tuple(sums), agg.count, agg.max_records_per_subject,
        agg.epsilon_per_run,
    )  # fmt: skip
    if plan.statistics == 0:
        raise InputError(
            f"flow {flow.name!r}: an aggregate releases a count or at least one sum",
            field="aggregate",
        )
    if plan.groups > MAX_GROUPS:
        raise InputError(
            f"flow {flow.name!r}: the group_by domains make {plan.groups:,} groups (at most "
            f"{MAX_GROUPS:,})",
            field="aggregate.group_by",
        )
    names = [d.name for d in dims] + value_columns(plan)
    clash = sorted({n for n in names if names.count(n) > 1 or n in (ROW, OP)})
    if clash:
        raise InputError(
            f"flow {flow.name!r}: output column {clash[0]!r} is named twice", field="aggregate"
        )
    return plan


def sum_unit(dataset: str, name: str, low: float, high: float) -> float:
    """The fixed point of a sum: the clean room's declared unit of that measure (so both
    compute the same integers), unless it is coarser than the bounds; else about
    ``_SIGNIFICANT`` digits of the larger bound."""
    bound = max(abs(low), abs(high))
    measure = DEFAULT_MEASURES.get(dataset, {}).get(name)
    if measure is not None and bound / measure.unit >= 1:
        return measure.unit
    return float(10.0 ** (math.floor(math.log10(bound)) - (_SIGNIFICANT - 1)))


def value_columns(plan: AggregatePlan) -> list[str]:
    out = [COUNT, COUNT + CI_SUFFIX] if plan.count else []
    for s in plan.sums:
        out += [s.column, s.column + CI_SUFFIX]
    return out


def delivered_columns(flow: Flow) -> list[str]:
    """The columns an aggregate flow delivers (``_row``/``_op`` aside), from the declaration
    alone: what the recipient's trust bundle declares for it (a records flow's is
    ``Flow.delivered``)."""
    agg = flow.aggregate
    if agg is None:
        raise InputError(f"flow {flow.name!r} is not an aggregate flow", field="kind")
    out = list(agg.group_by) + ([COUNT, COUNT + CI_SUFFIX] if agg.count else [])
    for name in sorted(agg.sums):
        out += [f"sum_{name}", f"sum_{name}{CI_SUFFIX}"]
    return out


def aggregate_schema(plan: AggregatePlan) -> pa.Schema:
    """The chunks' schema of an aggregate flow, as the recipient checks it (all nullable)."""
    columns: list[tuple[str, str]] = [(d.name, str(source_type(d.spec))) for d in plan.dimensions]
    if plan.count:
        columns += [(COUNT, "int64"), (COUNT + CI_SUFFIX, "double")]
    for s in plan.sums:
        columns += [(s.column, "double"), (s.column + CI_SUFFIX, "double")]
    return payload.arrow_schema(columns)


# ---------------------------------------------------------------------- bounding (pure)


def bound_contributions(
    subjects: Sequence[str] | np.ndarray, ranks: Sequence[str] | np.ndarray, limit: int
) -> np.ndarray:
    """Which records are kept: per subject (a name or an integer code), the ``limit`` records
    of smallest rank (ties by position). Pure; the order of the input does not matter."""
    n = len(subjects)
    if len(ranks) != n:
        raise ValueError("one rank per record")
    if limit < 1:
        raise ValueError("a subject keeps at least one record")
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    given = np.asarray(subjects)
    _, codes = np.unique(given.astype(str) if given.dtype == object else given, return_inverse=True)
    order = np.lexsort((np.arange(n), np.asarray(ranks), codes))
    sorted_codes = codes[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_codes[1:] != sorted_codes[:-1]
    positions = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, positions, 0))
    keep[order[(positions - first) < limit]] = True
    return keep


def clamp_units(values: pa.Array, s: SumSpec) -> np.ndarray:
    """A summed field's values clamped to its bounds, in integer units; missing or NaN is 0."""
    floats = pc.fill_null(values.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
    missing = np.isnan(floats)
    clamped = np.clip(np.where(missing, 0.0, floats), s.low, s.high)
    units = np.clip(np.rint(clamped / s.unit), s.low_units, s.high_units).astype(np.int64)
    return np.where(missing, 0, units).astype(np.int64)


@dataclass
class Totals:
    """The bounded, clamped, exact aggregates of a run: never released as they are."""

    counts: np.ndarray
    sums: dict[str, np.ndarray]
    records_read: int = 0
    records_in_groups: int = 0
    records_kept: int = 0


@dataclass
class Accumulator:
    """Gathers the opened pages of a run (what bounding needs per record), then bounds."""

    plan: AggregatePlan
    flow: Flow
    ds: DatasetSpec
    tokens: FlowTokens
    # Compact per record: subjects and record keys in Arrow arrays (tens of bytes a record,
    # not Python strings); a key is ranked only if its subject is over the bound.
    _subjects: list[pa.Array] = field(default_factory=list)
    _keys: list[pa.Array] = field(default_factory=list)
    _groups: list[np.ndarray] = field(default_factory=list)
    _units: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _read: int = 0

    def add(self, page: SnapshotBatch) -> None:
        """One opened page: filter, find each record's group, keep what bounding needs."""
        n = len(page.record_keys)
        self._read += n
        if n == 0:
            return
        wanted = {c.field for c in self.flow.source.filter}
        wanted |= {d.name for d in self.plan.dimensions} | {s.name for s in self.plan.sums}
        typed = {name: to_column(self.ds.field(name), page.columns[name]) for name in wanted}
        mask = row_mask(self.flow.source.filter, typed)
        keep = np.ones(n, dtype=bool) if mask is None else np.asarray(mask.to_pylist(), bool)
        group = np.zeros(n, dtype=np.int64)
        for dim in self.plan.dimensions:
            found = dim.positions(typed[dim.name])
            keep &= found >= 0  # outside the declared domain (or null): in no group
            group = group * len(dim.members) + np.maximum(found, 0)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return
        take = pa.array(rows)
        self._keys.append(pa.array(page.record_keys, pa.string()).take(take))
        self._subjects.append(pa.array(page.subjects, pa.string()).take(take))
        self._groups.append(group[rows])
        for s in self.plan.sums:
            col = typed[s.name].take(take)
            if isinstance(s.transform, Truncate):
                col = _truncate(col, s.transform.truncate)
            self._units.setdefault(s.name, []).append(clamp_units(col, s))

    def totals(self) -> Totals:
        g = self.plan.groups
        groups = np.concatenate(self._groups) if self._groups else np.zeros(0, np.int64)
        kept = self._bounded()
        counts = np.bincount(groups[kept], minlength=g).astype(np.int64)
        sums = {}
        for s in self.plan.sums:
            units = np.concatenate(self._units.get(s.name, [np.zeros(0, np.int64)]))
            total = np.zeros(g, dtype=np.int64)
            np.add.at(total, groups[kept], units[kept])  # exact in int64
            sums[s.name] = total
        return Totals(counts, sums, self._read, int(groups.size), int(kept.sum()))

    def _bounded(self) -> np.ndarray:
        """``bound_contributions`` over the records; only a subject over the bound needs its
        records ranked (an HMAC each), so only theirs are."""
        m = self.plan.max_records
        if not self._subjects:
            return np.zeros(0, dtype=bool)
        codes = pc.dictionary_encode(pa.concat_arrays(self._subjects)).indices
        subjects = np.asarray(codes.to_numpy(zero_copy_only=False), np.int64)
        kept = np.ones(subjects.size, dtype=bool)
        over = np.flatnonzero(np.bincount(subjects)[subjects] > m)
        if over.size:
            keys = pa.concat_arrays(self._keys).take(pa.array(over)).to_pylist()
            ranks = record_ranks(keys, rank_key(self.tokens))
            kept[over] = bound_contributions(subjects[over], ranks, m)
        return kept


def rank_key(tokens: FlowTokens) -> bytes:
    """The key that ranks a subject's records: secret to the flow's token scope."""
    return tokens.row(_RANK_LABEL).encode()


def record_ranks(record_keys: Sequence[str], key: bytes) -> np.ndarray:
    """Each record's rank: the first 8 bytes of BLAKE2b keyed with ``key``, as an integer."""
    digest = hashlib.blake2b
    raw = b"".join(digest(k.encode(), key=key, digest_size=8).digest() for k in record_keys)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def _truncate(col: pa.Array, n: int) -> pa.Array:
    if pa.types.is_integer(col.type):
        return pc.multiply(pc.divide(col, n), n)
    return pc.multiply(pc.floor(pc.divide(col.cast(pa.float64()), float(n))), float(n))


# ---------------------------------------------------------------------- release


@dataclass(frozen=True)
class AggregateRelease:
    table: pa.Table
    epsilon: float  # what OpenDP's maps say the run spent (at most epsilon_per_run)
    mechanisms: tuple[str, ...]
    records_read: int
    records_kept: int


def release_totals(plan: AggregatePlan, totals: Totals, tokens: FlowTokens) -> AggregateRelease:
    """The noisy table of every group, through the clean room's release layer."""
    keys = plan.keys()
    schema = aggregate_schema(plan)
    alpha = 1.0 - CONFIDENCE
    arrays: list[pa.Array] = [
        pa.array([tokens.row("group:" + _key_text(k)) for k in keys], pa.string()),
        pa.array([UPSERT] * len(keys), pa.string()),
    ]
    for i, dim in enumerate(plan.dimensions):
        arrays.append(pa.array([k[i] for k in keys], source_type(dim.spec)))
    spent, mechanisms = 0.0, []
    if plan.count:
        noisy = laplace([int(v) for v in totals.counts], plan.count_l1, plan.epsilon_each)
        acc = laplace_accuracy(noisy.scale, alpha)
        arrays += [pa.array(noisy.values, pa.int64()), pa.array([acc] * len(keys), pa.float64())]
        spent += noisy.epsilon
        mechanisms.append(f"discrete_laplace(count, scale={noisy.scale:g})")
    for s in plan.sums:
        values = [int(v) for v in totals.sums[s.name]]
        noisy = laplace(values, plan.sum_l1(s), plan.epsilon_each)
        acc = laplace_accuracy(noisy.scale, alpha) * s.unit
        arrays += [
            pa.array([v * s.unit for v in noisy.values], pa.float64()),
            pa.array([acc] * len(keys), pa.float64()),
        ]
        spent += noisy.epsilon
        mechanisms.append(f"discrete_laplace({s.column}, scale={noisy.scale * s.unit:g})")
    if spent > plan.epsilon * (1 + 1e-9):
        raise CalibrationError(f"flow {plan.flow!r}: the run would spend {spent} > {plan.epsilon}")
    table = pa.Table.from_arrays(arrays, schema=schema)
    return AggregateRelease(
        table, spent, tuple(mechanisms), totals.records_read, totals.records_kept
    )


def build_aggregate(
    flow: Flow, ds: DatasetSpec, pages: Iterable[SnapshotBatch], tokens: FlowTokens
) -> AggregateRelease:
    """One run's release from the opened pages of a full extract of the flow's fields."""
    plan = plan_aggregate(flow, ds)
    acc = Accumulator(plan, flow, ds, tokens)
    for page in pages:
        acc.add(page)
    return release_totals(plan, acc.totals(), tokens)


# ---------------------------------------------------------------------- the budget


def ensure_budget(store: EgressStore, flow: Flow) -> None:
    """Before anything is extracted: refuse a run the flow's budget cannot pay for. (The
    charge itself is ``charge_budget``, in the manifest's commit; this only saves recording
    an extract for nothing.)"""
    agg = flow.aggregate
    assert agg is not None
    spent = store.spent(flow.name)
    if spent + agg.epsilon_per_run > agg.epsilon_budget + 1e-12:
        raise AggregateBudgetExhausted(_exhausted(flow, spent))


def charge_budget(store: EgressStore, cur: Cursor, flow: Flow) -> None:
    """Spend one run's epsilon of the flow's own budget, in the manifest entry's commit: over
    the budget it raises, and neither the manifest nor the run is recorded."""
    agg = flow.aggregate
    assert agg is not None
    try:
        store.charge_in(cur, flow.name, agg.epsilon_per_run, agg.epsilon_budget)
    except BudgetExhausted as exc:
        raise AggregateBudgetExhausted(f"{exc}: nothing was released") from None


def _exhausted(flow: Flow, spent: float) -> str:
    agg = flow.aggregate
    assert agg is not None
    return (
        f"flow {flow.name!r} has spent {spent:g} of its epsilon budget {agg.epsilon_budget:g} "
        f"and a run costs {agg.epsilon_per_run:g}: nothing was released (load a new flow to "
        "release more; its budget is its own)"
    )


def _text(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _key_text(key: Sequence[DomainValue]) -> str:
    return json.dumps([_text(v) for v in key], separators=(",", ":"))


__all__ = [
    "AggregateBudgetExhausted",
    "AggregatePlan",
    "AggregateRelease",
    "aggregate_schema",
    "bound_contributions",
    "build_aggregate",
    "charge_budget",
    "delivered_columns",
    "ensure_budget",
    "plan_aggregate",
]
