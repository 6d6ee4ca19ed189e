"""Aggregate flows: DP counts and sums by public dimensions, end to end on both backends (every
declared group released, verified by the recipient, the flow's own budget charged with the
manifest), and the privacy mechanics on their own: bounding, clamping, calibration, and an
empirical audit that catches a planted bug."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.demo.platform import sample_event
from bastion.egress import aggregate, payload
from bastion.egress.aggregate import (
    Accumulator,
    AggregateBudgetExhausted,
    AggregatePlan,
    bound_contributions,
    delivered_columns,
    plan_aggregate,
    release_totals,
)
from bastion.egress.model import Flow, parse_flows
from bastion.egress.tokens import FlowTokens
from bastion.egress.verify import SqliteReplayState, verify_delivery
from bastion.egress.wiring import Egress
from bastion.errors import InputError
from bastion.events import EgressExtract, EgressManifest, decode_event
from bastion.gateway.runtime import Runtime
from bastion.store import Database
from bastion.vault.snapshot import SnapshotBatch

from .flows_support import ADMIN, USERS, deliveries, egress_on, home_with_events, trust_for

FLOW = "engagement-by-region"
REGIONS = ["us-west", "uk", "brazil"]
TYPES = ["view", "like"]
CATALOG = default_catalog()
EVENTS = CATALOG.dataset("events")
DOMAIN_REGIONS = list(EVENTS.field("region").domain.members())  # type: ignore[union-attr]
DOMAIN_TYPES = list(EVENTS.field("event_type").domain.members())  # type: ignore[union-attr]


def event(n: int, user: int) -> dict[str, Any]:
    e = sample_event(n, user)
    e["region"] = REGIONS[n % len(REGIONS)]
    e["event_type"] = TYPES[n % len(TYPES)]
    e["watch_time_s"] = None if e["event_type"] == "like" else float(100 * n)  # some > 600
    return e


@pytest.fixture
def rt(db: Database, tmp_path: Path, clock: FixedClock) -> Iterator[Runtime]:
    events = [event(n, 1 + n % USERS) for n in range(1, 37)]
    with home_with_events(db, tmp_path, clock, events) as runtime:
        yield runtime


@pytest.fixture
def egress(rt: Runtime) -> Egress:
    return egress_on(rt)


@pytest.fixture
def recipient() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def flow_yaml(
    key: X25519PrivateKey,
    *,
    budget: float = 30,
    per_run: float = 1.0,
    region: str = "keep",
    m: int = 20,
) -> str:
    public = payload.public_key_to_b64(key.public_key())
    return f"""
flows:
  - name: {FLOW}
    version: 1
    kind: aggregate
    description: engagement by region, differentially private
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {public}
    source:
      dataset: events
      mode: full
    fields:
      region: {region}
      event_type: keep
      watch_time_s: keep
    aggregate:
      group_by: [region, event_type]
      count: true
      sums: {{watch_time_s: [0, 600]}}
      max_records_per_subject: {m}
      epsilon_per_run: {per_run}
      epsilon_budget: {budget}
    schedule: {{every: 1d}}
    destination: {{type: files, path: outbox}}
"""


def the_flow(key: X25519PrivateKey, **kw: Any) -> Flow:
    (flow,) = parse_flows(flow_yaml(key, **kw))
    return flow


def load(egress: Egress, text: str) -> Any:
    return egress.loader.load(text, source="flows.yaml", actor=ADMIN, reason="DP engagement")


def log_of(rt: Runtime) -> list[Any]:
    return [decode_event(bytes(rt.ledger.entry(i))) for i in range(rt.ledger.size())]


def received(rt: Runtime, key: X25519PrivateKey, delivered: Path, out: Path, state: Path) -> Any:
    fields = {FLOW: delivered_columns(the_flow(key))}
    verify_delivery(delivered, trust_for(rt, fields), key, state=SqliteReplayState(state), out=out)
    return pq.read_table(next(out.rglob("*.parquet")))


# ------------------------------------------------------------------ end to end


def test_a_run_releases_every_declared_group_the_recipient_verifies_and_it_is_charged(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, tmp_path: Path
) -> None:
    assert load(egress, flow_yaml(recipient)).loaded == [FLOW]
    first = egress.runner.run(FLOW)
    groups = len(DOMAIN_REGIONS) * len(DOMAIN_TYPES)
    assert first.status == "delivered" and first.rows == groups == 40 and first.tombstones == 0
    assert egress.store.spent(FLOW) == pytest.approx(1.0)

    log = log_of(rt)
    (extract,) = [e for e in log if isinstance(e, EgressExtract)]
    assert (extract.mode, extract.after_seq) == ("full", 0)
    assert sorted(extract.fields) == ["event_type", "region", "watch_time_s"]
    (manifest,) = [e for e in log if isinstance(e, EgressManifest)]
    assert manifest.manifest_id == first.manifest_id and manifest.rows == 40
    assert manifest.envelope  # the signed statement says kind aggregate:
    assert '"kind":"aggregate"' in _statement_text(manifest.envelope)

    state = tmp_path / "state.sqlite"
    (delivered,) = deliveries(rt, FLOW)
    table = received(rt, recipient, delivered, tmp_path / "a", state)
    assert table.column_names == [
        "_row", "_op", "region", "event_type",
        "count", "count_ci95", "sum_watch_time_s", "sum_watch_time_s_ci95",
    ]  # fmt: skip
    # Every group of the declared domains, the empty ones too, once each, in domain order.
    keys = list(
        zip(table.column("region").to_pylist(), table.column("event_type").to_pylist(), strict=True)
    )
    assert keys == list(itertools.product(DOMAIN_REGIONS, DOMAIN_TYPES))
    assert set(table.column("_op").to_pylist()) == {"upsert"}
    rows = table.column("_row").to_pylist()
    assert len(set(rows)) == 40 and all(r.startswith("ft_") for r in rows)
    # The calibration the recipient is told: count L1 = m = 20 at epsilon 1/2 (scale 40).
    ci = set(table.column("count_ci95").to_pylist())
    assert len(ci) == 1 and 100 < ci.pop() < 150

    # A second run releases again (every run does), under the same group tokens: upserts.
    second = egress.runner.run(FLOW)
    assert second.status == "delivered" and second.run == 2 and second.rows == 40
    assert egress.store.spent(FLOW) == pytest.approx(2.0)
    later = next(d for d in deliveries(rt, FLOW) if d.name == second.manifest_id)
    again = received(rt, recipient, later, tmp_path / "b", state)
    assert again.column("_row").to_pylist() == rows


def _statement_text(envelope: dict[str, Any]) -> str:
    import base64

    return base64.b64decode(envelope["payload"]).decode().replace(" ", "")


def test_an_exhausted_budget_refuses_the_run_and_a_failed_append_spends_nothing(
    rt: Runtime,
    egress: Egress,
    recipient: X25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load(egress, flow_yaml(recipient, budget=2, per_run=1))

    def fail(step: str) -> None:
        if step == "spooled":
            raise RuntimeError("the ledger is down")

    # A failed manifest append records nothing and spends nothing.
    egress.context.fault = fail
    with pytest.raises(RuntimeError):
        egress.runner.run(FLOW)
    assert egress.store.spent(FLOW) == 0.0
    assert egress.store.state(FLOW).run == 0  # type: ignore[union-attr]
    assert deliveries(rt, FLOW) == []
    egress.context.fault = None

    assert egress.runner.run(FLOW).status == "delivered"
    assert egress.runner.run(FLOW).status == "delivered"
    assert egress.store.spent(FLOW) == pytest.approx(2.0)
    size, manifests = rt.ledger.size(), len(deliveries(rt, FLOW))

    # The budget is spent: refused before anything is extracted, recorded or delivered.
    with pytest.raises(AggregateBudgetExhausted, match="epsilon budget 2"):
        egress.runner.run(FLOW)
    assert rt.ledger.size() == size and len(deliveries(rt, FLOW)) == manifests

    # The charge in the manifest's commit is what holds (a run that got past the early check
    # by a race): the side write refuses, and neither the manifest nor the run is recorded.
    monkeypatch.setattr(aggregate, "ensure_budget", lambda store, flow: None)
    with pytest.raises(AggregateBudgetExhausted, match="nothing was released"):
        egress.runner.run(FLOW)
    assert not any(isinstance(e, EgressManifest) for e in log_of(rt)[size:])
    assert egress.store.state(FLOW).run == 2  # type: ignore[union-attr]
    assert egress.store.spent(FLOW) == pytest.approx(2.0)
    assert len(deliveries(rt, FLOW)) == manifests
    assert egress.store.undelivered(FLOW) == []


# ------------------------------------------------------------------ the plan


def test_the_plan_is_fixed_by_the_declaration_and_the_catalog() -> None:
    plan = plan_aggregate(the_flow(X25519PrivateKey.generate()), EVENTS)
    assert plan.groups == 40 and plan.statistics == 2 and plan.epsilon_each == 0.5
    (s,) = plan.sums
    # The clean room's fixed point for watch time (0.1 s): one record moves a sum <= 6000.
    assert (s.unit, s.max_units) == (0.1, 6000)
    assert plan.count_l1 == 20 and plan.sum_l1(s) == 20 * 6000
    # What the trust bundle declares is the schema's columns, from the declaration alone.
    schema = aggregate.aggregate_schema(plan)
    assert ["_row", "_op", *delivered_columns(the_flow(X25519PrivateKey.generate()))] == (
        schema.names
    )


def test_a_group_by_field_that_is_transformed_is_refused_naming_it() -> None:
    flow = the_flow(X25519PrivateKey.generate(), region="{truncate: 2}")
    with pytest.raises(InputError) as err:
        plan_aggregate(flow, EVENTS)
    assert err.value.field == "fields.region"


# ------------------------------------------------------------------ bounding and clamping


def test_bounding_keeps_at_most_the_bound_per_subject_the_same_whatever_the_order() -> None:
    subjects = ["a"] * 50 + ["b"] * 3 + ["c"]
    ranks = [f"r{i:03d}" for i in range(54)]
    kept = bound_contributions(subjects, ranks, 5)
    assert kept[:50].sum() == 5 and kept[50:53].all() and kept[53]
    assert list(np.flatnonzero(kept[:50])) == [0, 1, 2, 3, 4]  # the smallest ranks
    perm = np.random.default_rng(7).permutation(54)
    again = bound_contributions([subjects[i] for i in perm], [ranks[i] for i in perm], 5)
    assert sorted(np.asarray(ranks)[perm][again]) == sorted(np.asarray(ranks)[kept])


def page(records: list[tuple[str, str, str, str, float | None]]) -> SnapshotBatch:
    """(key, subject, region, event_type, watch_time_s) records as the vault opens them."""
    return SnapshotBatch(
        record_keys=[r[0] for r in records],
        columns={
            "region": [r[2] for r in records],
            "event_type": [r[3] for r in records],
            "watch_time_s": [r[4] for r in records],
        },
        subjects=[r[1] for r in records],
    )


def totals_of(plan: AggregatePlan, flow: Flow, records: list[Any]) -> Any:
    acc = Accumulator(plan, flow, EVENTS, TOKENS)
    acc.add(page(records))
    return acc.totals()


TOKENS = FlowTokens(bytes(range(32)))
BASE = [(f"k{i}", f"s{i % 9}", REGIONS[i % 3], TYPES[i % 2], 30.0) for i in range(60)]
HEAVY = [(f"h{i}", "heavy", "uk", "view", 1e9) for i in range(500)]


def test_a_subject_with_many_records_moves_a_count_and_a_sum_by_at_most_its_bound() -> None:
    flow = the_flow(X25519PrivateKey.generate())
    plan = plan_aggregate(flow, EVENTS)
    without, with_heavy = totals_of(plan, flow, BASE), totals_of(plan, flow, BASE + HEAVY)
    assert with_heavy.records_kept - without.records_kept == 20
    assert np.abs(with_heavy.counts - without.counts).sum() == plan.count_l1
    (s,) = plan.sums
    moved = np.abs(with_heavy.sums[s.name] - without.sums[s.name]).sum()
    assert moved == plan.sum_l1(s)  # each value clamped to 600 s: 20 * 6000 units


def test_values_are_clamped_missing_ones_add_nothing_and_unknown_groups_are_left_out() -> None:
    flow = the_flow(X25519PrivateKey.generate())
    plan = plan_aggregate(flow, EVENTS)
    records = [
        ("a", "s1", "uk", "view", -50.0),  # clamped up to 0
        ("b", "s2", "uk", "view", 1234.5),  # clamped down to 600
        ("c", "s3", "uk", "view", 12.34),  # 12.3 s in the clean room's 0.1 s units
        ("d", "s4", "uk", "view", None),  # counted, adds nothing
        ("e", "s5", "uk", "view", float("nan")),  # the same
        ("f", "s6", "atlantis", "view", 10.0),  # no such region: in no group
    ]
    t = totals_of(plan, flow, records)
    uk_view = DOMAIN_REGIONS.index("uk") * len(DOMAIN_TYPES) + DOMAIN_TYPES.index("view")
    assert t.counts[uk_view] == 5 and t.counts.sum() == 5
    assert t.sums["watch_time_s"][uk_view] == 0 + 6000 + 123
    assert t.records_read == 6 and t.records_in_groups == 5


# ------------------------------------------------------------------ the DP audit

RUNS = 3_000
CONFIDENCE = 0.999


def _noise_variance(scale: float) -> float:
    """The variance of discrete Laplace noise of this scale."""
    a = math.exp(-1.0 / scale)
    return 2 * a / (1 - a) ** 2


def test_the_released_noise_matches_the_calibration() -> None:
    flow = the_flow(X25519PrivateKey.generate())
    plan = plan_aggregate(flow, EVENTS)
    t = totals_of(plan, flow, BASE + HEAVY)
    (s,) = plan.sums
    count_err, sum_err = [], []
    for _ in range(600):
        table = release_totals(plan, t, TOKENS).table
        count_err.append(np.asarray(table.column("count").to_pylist()) - t.counts)
        units = np.rint(np.asarray(table.column(s.column).to_pylist()) / s.unit)
        sum_err.append(units - t.sums[s.name])
    for errors, l1 in ((count_err, plan.count_l1), (sum_err, plan.sum_l1(s))):
        e = np.concatenate(errors)
        expected = _noise_variance(l1 / plan.epsilon_each)  # count scale 40, sum 240,000 units
        # 24,000 draws: the sample variance is within 6% of the calibration's (over 4 sigmas;
        # a sensitivity or an epsilon split off by a factor of 2 moves it 4x).
        assert abs(e.var() / expected - 1) < 0.06
        assert abs(e.mean()) < 5 * math.sqrt(expected / e.size)


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def empirical_epsilon_lower_bound(a: np.ndarray, b: np.ndarray) -> float:
    """A high-confidence lower bound on the privacy loss between two answer samples (as in
    tests/cleanroom/test_cleanroom_privacy.py)."""
    thresholds = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0.02, 0.98, 25)))
    alpha = (1 - CONFIDENCE) / (4 * len(thresholds))
    best = 0.0
    for t in thresholds:
        for p, q in ((a >= t, b >= t), (b >= t, a >= t), (a <= t, b <= t), (b <= t, a <= t)):
            p_lo, _ = _clopper_pearson(int(p.sum()), len(p), alpha)
            _, q_hi = _clopper_pearson(int(q.sum()), len(q), alpha)
            if p_lo > 0:
                best = max(best, math.log(p_lo / q_hi))
    return best


def _audit(*, bounded: bool = True, clamped: bool = True) -> float:
    """The heavy subject's group, released RUNS times with and without the heavy subject: its
    count, or (``clamped`` False) its sum."""
    flow = the_flow(X25519PrivateKey.generate())
    declared = plan_aggregate(flow, EVENTS)
    # One statistic alone, at its share of the run's epsilon: the same calibration.
    sums = () if clamped else declared.sums
    plan = AggregatePlan(
        declared.flow, declared.dimensions, sums, clamped, declared.max_records,
        declared.epsilon_each,
    )  # fmt: skip
    engine_plan = plan
    if not bounded:
        # The planted bug: bounding is switched off while the release still calibrates its
        # noise to the declared bound.
        engine_plan = dataclasses.replace(plan, max_records=10**6)
    if not clamped:
        # The planted bug: values are not clamped to the declared bounds, while the release
        # still calibrates its noise to them.
        engine_plan = dataclasses.replace(
            plan, sums=tuple(dataclasses.replace(s, high=1e12) for s in plan.sums)
        )
    full = totals_of(engine_plan, flow, BASE + HEAVY)
    near = totals_of(engine_plan, flow, BASE)
    uk_view = DOMAIN_REGIONS.index("uk") * len(DOMAIN_TYPES) + DOMAIN_TYPES.index("view")
    column = "count" if clamped else plan.sums[0].column

    def answers(t: Any) -> np.ndarray:
        return np.asarray(
            [release_totals(plan, t, TOKENS).table.column(column)[uk_view].as_py()
             for _ in range(RUNS)]
        )  # fmt: skip

    return empirical_epsilon_lower_bound(answers(full), answers(near))


def test_the_dp_audit_finds_the_counts_consistent_with_their_epsilon() -> None:
    plan = plan_aggregate(the_flow(X25519PrivateKey.generate()), EVENTS)
    assert _audit(bounded=True) <= plan.epsilon_each


def test_the_dp_audit_catches_a_planted_bug_without_bounding() -> None:
    leaked = _audit(bounded=False)
    assert leaked > 1.0, f"the audit must catch the unbounded aggregate ({leaked:.2f})"


def test_the_dp_audit_catches_a_planted_bug_without_clamping() -> None:
    leaked = _audit(clamped=False)
    assert leaked > 1.0, f"the audit must catch the unclamped sum ({leaked:.2f})"


SPREAD = [(f"x{i}", "heavy", DOMAIN_REGIONS[i % 8], "view", 10.0) for i in range(400)]


def test_which_records_a_heavy_subject_keeps_is_keyed_by_the_flow_and_stable() -> None:
    flow = the_flow(X25519PrivateKey.generate())
    plan = plan_aggregate(flow, EVENTS)

    def counts(key: bytes) -> list[int]:
        acc = Accumulator(plan, flow, EVENTS, FlowTokens(key))
        acc.add(page(SPREAD))
        return [int(c) for c in acc.totals().counts]

    one, other = counts(bytes(32)), counts(bytes([1]) * 32)
    assert sum(one) == sum(other) == 20
    assert counts(bytes(32)) == one  # the same sample every run
    assert one != other  # another flow's key: another sample, no one can steer it
    # Not the first 20 records of the feed (which would all fall in the first regions' order).
    first = [0] * plan.groups
    for _, _, region, kind, _ in SPREAD[:20]:
        first[DOMAIN_REGIONS.index(region) * len(DOMAIN_TYPES) + DOMAIN_TYPES.index(kind)] += 1
    assert one != first or other != first


def test_a_date_dimension_groups_by_its_declared_days_only() -> None:
    text = (
        flow_yaml(X25519PrivateKey.generate())
        .replace("group_by: [region, event_type]", "group_by: [day]")
        .replace("      event_type: keep\n", "      event_type: keep\n      day: keep\n")
    )
    (flow,) = parse_flows(text)
    plan = plan_aggregate(flow, EVENTS)
    assert plan.groups == 28
    records = SnapshotBatch(
        record_keys=["a", "b", "c"],
        columns={
            "region": ["uk"] * 3,
            "event_type": ["view"] * 3,
            "watch_time_s": [1.0] * 3,
            "day": ["2026-01-03", "2026-01-03", "2025-12-31"],  # the last is outside the domain
        },
        subjects=["s1", "s2", "s3"],
    )
    acc = Accumulator(plan, flow, EVENTS, TOKENS)
    acc.add(records)
    t = acc.totals()
    assert t.counts[2] == 2 and t.counts.sum() == 2
    table = release_totals(plan, t, TOKENS).table
    assert table.column("day").type == pa.date32() and table.num_rows == 28


def test_an_empty_extract_still_releases_every_group() -> None:
    flow = the_flow(X25519PrivateKey.generate())
    released = aggregate.build_aggregate(flow, EVENTS, [], TOKENS)
    assert released.table.num_rows == 40 and released.records_kept == 0
    assert released.epsilon == pytest.approx(1.0)
    assert released.mechanisms == (
        "discrete_laplace(count, scale=40)",
        "discrete_laplace(sum_watch_time_s, scale=24000)",
    )


def test_a_declaration_the_release_cannot_plan_is_refused_at_load(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey
) -> None:
    # A group_by field generalized away from its domain: the release groups only by the
    # catalog's own values, so the load refuses it (recorded), naming the field.
    from bastion.egress.loading import FlowRefused

    with pytest.raises(FlowRefused) as err:
        load(egress, flow_yaml(recipient, region="{truncate: 2}"))
    (refusal,) = err.value.refused[FLOW].refusals
    assert refusal.code == "aggregate.plan" and refusal.field == "fields.region"
    assert egress.store.stored(FLOW) is None and egress.store.spent(FLOW) == 0.0
