"""28 CFR 202.205 bulk counters on both backends: distinct subjects per rolling 12 months,
per employer and per principal; crossing a threshold is refused and counts nothing."""

from __future__ import annotations

import threading
from datetime import timedelta
from importlib import resources

import pytest

from bastion.catalog import SensitiveCategory, parse_catalog
from bastion.clock import FixedClock
from bastion.policy import (
    LEGAL_THRESHOLDS,
    BulkCounter,
    BulkThresholdExceeded,
    BulkThresholds,
    PlanRequest,
    PolicyEngine,
    Transform,
    default_policies,
    usage_for,
)
from bastion.policy.thresholds import migrate_thresholds
from bastion.store import Database

from .conftest import PEOPLE

GEO = SensitiveCategory.PRECISE_GEOLOCATION
CPI = SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS
HEALTH = SensitiveCategory.HEALTH


def counter(db: Database, clock: FixedClock, limit: int = 10, **kw: object) -> BulkCounter:
    migrate_thresholds(db)
    limits = {GEO: limit, CPI: limit * 10, HEALTH: limit}
    return BulkCounter(db, clock, BulkThresholds(employer=limits, principal=limits), **kw)  # type: ignore[arg-type]


def subjects(a: int, b: int) -> list[str]:
    return [f"u{i}" for i in range(a, b)]


def test_legal_defaults() -> None:
    assert LEGAL_THRESHOLDS[CPI] == 100_000
    assert LEGAL_THRESHOLDS[GEO] == 1_000
    assert LEGAL_THRESHOLDS[HEALTH] == LEGAL_THRESHOLDS[SensitiveCategory.FINANCIAL] == 10_000


def test_distinct_subjects_are_counted_once(db: Database, clock: FixedClock) -> None:
    c = counter(db, clock)
    r = c.check_and_reserve("alice", "custodian", {GEO: subjects(0, 6)})
    assert r.added[("employer", GEO)] == 6 and r.totals[("principal", GEO)] == 6
    r = c.check_and_reserve("alice", "custodian", {GEO: subjects(3, 8)})  # 3 already seen
    assert r.added[("employer", GEO)] == 2 and r.totals[("employer", GEO)] == 8
    assert c.usage("employer", "custodian") == {GEO: 8}


def test_crossing_the_threshold_is_refused_and_counts_nothing(
    db: Database, clock: FixedClock
) -> None:
    c = counter(db, clock)
    c.check_and_reserve("alice", "custodian", {GEO: subjects(0, 8), HEALTH: subjects(0, 2)})
    with pytest.raises(BulkThresholdExceeded) as err:
        c.check_and_reserve("alice", "custodian", {HEALTH: subjects(2, 3), GEO: subjects(8, 11)})
    e = err.value
    assert (e.category, e.current, e.adding, e.limit) == (GEO, 8, 3, 10)
    assert "28 CFR 202.205" in str(e) and "u8" not in str(e)
    # All or nothing: the health subject in the refused request was not counted either.
    assert c.usage("employer", "custodian") == {GEO: 8, HEALTH: 2}
    # Exactly at the limit is allowed ("more than" the threshold is bulk).
    c.check_and_reserve("alice", "custodian", {GEO: subjects(8, 10)})
    assert c.usage("employer", "custodian")[GEO] == 10


def test_the_employer_counts_all_its_principals(db: Database, clock: FixedClock) -> None:
    c = counter(db, clock)
    c.check_and_reserve("alice", "parentco", {GEO: subjects(0, 6)})
    with pytest.raises(BulkThresholdExceeded) as err:
        c.check_and_reserve("bob", "parentco", {GEO: subjects(6, 11)})
    assert err.value.scope_kind == "employer"
    # Another employer has its own count.
    c.check_and_reserve("carol", "othercorp", {GEO: subjects(6, 11)})


def test_per_principal_limit(db: Database, clock: FixedClock) -> None:
    migrate_thresholds(db)
    c = BulkCounter(db, clock, BulkThresholds(employer={GEO: 1000}, principal={GEO: 5}))
    c.check_and_reserve("alice", "custodian", {GEO: subjects(0, 5)})
    with pytest.raises(BulkThresholdExceeded) as err:
        c.check_and_reserve("alice", "custodian", {GEO: subjects(5, 6)})
    assert err.value.scope_kind == "principal" and err.value.scope == "custodian/alice"
    c.check_and_reserve("bob", "custodian", {GEO: subjects(5, 10)})


def test_the_window_rolls_over_twelve_months(db: Database, clock: FixedClock) -> None:
    c = counter(db, clock)
    c.check_and_reserve("alice", "custodian", {GEO: subjects(0, 10)})
    clock.advance(timedelta(days=200))
    c.check_and_reserve("alice", "custodian", {GEO: subjects(0, 4)})  # re-seen: still 10
    with pytest.raises(BulkThresholdExceeded):
        c.check_and_reserve("alice", "custodian", {GEO: ["new"]})
    clock.advance(timedelta(days=170))  # u4..u9 last seen 370 days ago: out of the window
    r = c.check_and_reserve("alice", "custodian", {GEO: subjects(100, 106)})
    assert r.totals[("employer", GEO)] == 10
    assert c.usage("employer", "custodian") == {GEO: 10}


def test_subject_ids_are_stored_only_as_keyed_hashes(db: Database, clock: FixedClock) -> None:
    c = counter(db, clock, hash_key=b"k" * 32)
    c.check_and_reserve("alice", "custodian", {GEO: ["user-secret-id"]})
    rows = db.query("SELECT item_hash FROM bulk_seen")
    assert rows and all("user-secret-id" not in str(r) for r in rows)
    assert (
        rows[0][0]
        == c.item_hash("user-secret-id")
        != counter(db, clock).item_hash("user-secret-id")
    )


def test_concurrent_reservations_never_overshoot(db: Database, clock: FixedClock) -> None:
    c = counter(db, clock, limit=20)
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            c.check_and_reserve(f"p{n}", "custodian", {GEO: subjects(n * 4, n * 4 + 4)})
            outcome = "ok"
        except BulkThresholdExceeded:
            outcome = "refused"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 5 and results.count("refused") == 5
    assert c.usage("employer", "custodian") == {GEO: 20}


def test_usage_follows_the_released_categories_of_a_plan(engine: PolicyEngine) -> None:
    plan = engine.plan(
        PEOPLE["staff"],
        PlanRequest(dataset="users", purpose="p", ticket="T-1", ticket_subjects=("u1", "u2")),
    )
    usage = usage_for(plan, ["u1", "u2", "u1"], devices=["d1"])
    # location is pending approval, so precise geolocation is not released and not counted.
    assert usage == {CPI: ["u1", "u2"]}


def test_usage_counts_every_transform_and_uncategorized_pseudonyms(
    engine: PolicyEngine, clock: FixedClock
) -> None:
    """28 CFR 202 counts pseudonymized data too: a masked or pseudonymized identifier counts,
    and so does a field the catalog pseudonymizes without naming a category for it."""
    masked = engine.plan(
        PEOPLE["moderator"], PlanRequest(dataset="users", fields=("email",), purpose="p")
    )
    assert masked.field("email").transform is Transform.MASK
    assert usage_for(masked, ["u1"]) == {CPI: ["u1"]}
    text = resources.files("bastion.catalog").joinpath("platform.yaml").read_text("utf-8")
    stripped = text.replace(
        "    category: covered_personal_identifiers\n        pseudonymize: true\n",
        "    pseudonymize: true\n",
    )
    catalog = parse_catalog(stripped, "no-categories.yaml")
    assert catalog.dataset("users").field("device_ids").category is None
    bare = PolicyEngine(default_policies(), catalog, clock=clock)
    plan = bare.plan(
        PEOPLE["engineer_abroad"],
        PlanRequest(dataset="users", fields=("user_id", "device_ids"), purpose="p"),
    )
    assert set(plan.released.values()) == {Transform.PSEUDONYM}
    assert plan.released_categories == {CPI}
    assert usage_for(plan, ["u1", "u2"]) == {CPI: ["u1", "u2"]}
