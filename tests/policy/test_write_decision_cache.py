"""Write decisions are cached per caller, dataset, fields and action: a cached allow is never
answered to another caller, another set of fields or another action, nor once time moves
past a policy that reads the clock."""

from __future__ import annotations

from datetime import timedelta

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.policy import PolicyEngine, compile_policies
from bastion.policy.vocabulary import Action

from .conftest import make

SERVICE = {"amr": ("hwk",), "clearance": "none"}


def test_a_cached_write_decision_is_reused_only_for_the_same_request(
    engine: PolicyEngine,
) -> None:
    svc = make("profile-service", "service", **SERVICE)
    first = engine.decide_write(svc, "users", ["email", "language"], Action.WRITE)
    assert first.allowed
    assert engine.decide_write(svc, "users", ["email", "language"], Action.WRITE) is first
    # The same name from abroad is another caller: protected fields stay onshore.
    abroad = make("profile-service", "service", location_country="SG", **SERVICE)
    assert not engine.decide_write(abroad, "users", ["email", "language"], Action.WRITE).allowed
    # Another service, another action, another dataset: each decided on its own.
    other = make("content-service", "service", **SERVICE)
    assert not engine.decide_write(other, "users", ["email", "language"], Action.WRITE).allowed
    assert not engine.decide_write(svc, "users", ["email", "language"], Action.DELETE).allowed
    assert not engine.decide_write(svc, "videos", ["title"], Action.WRITE).allowed
    # And the allow is still the allow afterwards.
    assert engine.decide_write(svc, "users", ["email", "language"], Action.WRITE) is first


def test_a_policy_that_reads_the_clock_is_decided_afresh() -> None:
    text = """
@id("svc-until")
permit (principal, action == Bastion::Action::"write", resource is Bastion::Field)
when { principal.role == "service" && context.now < datetime("2026-01-01T00:00:10Z") };
"""
    clock = FixedClock()
    engine = PolicyEngine(compile_policies(text), default_catalog(), clock=clock)
    svc = make("profile-service", "service", **SERVICE)
    assert engine.decide_write(svc, "users", ["language"], Action.WRITE).allowed
    clock.advance(timedelta(seconds=11))
    assert not engine.decide_write(svc, "users", ["language"], Action.WRITE).allowed
