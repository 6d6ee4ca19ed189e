"""The invariant checker against brute force: whatever a random search finds, it finds too.

For the shipped pack and packs a careless author (or an attacker) could write, thousands of
seeded random field requests, with real token attributes (roles, employers and countries no
policy names, every amr mix, empty purposes and tickets, every approval count, flag,
classification, category and action), are derived by ``derive_attributes`` and decided by
Cedar on the whole policy set. Soundness: when brute force finds a request that breaks an
invariant, the checker must report that invariant broken. And every counterexample the
checker reports is replayed from its JSON, outside the checker: realizable, in scope, allowed
by Cedar, and breaking the expectation.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from functools import cache

import pytest

from bastion.policy import compile_policies, default_pack_text
from bastion.policy.invariants import (
    InvariantSet,
    check_invariants,
    parse_invariants,
    shipped_invariants,
)

from .invariant_oracle import Batch, replay, sample_requests, violations

SEED = 20260102
REQUESTS = 4000

# Invariants beyond the shipped ones, so that every kind of expectation is cross-checked.
EXTRA = """
version: 1
invariants:
  - id: moderators-identifiers-at-most-masked
    description: moderators never see an identifier more than masked
    when:
      principal: {role: moderator}
      resource: {category: covered_personal_identifiers}
      action: [read, search, export, break_glass]
    expect: {at_most: mask}
  - id: abroad-identifiers-at-most-pseudonym
    description: outside the US an identifier leaves a partner only as a pseudonym
    when:
      principal: {custodian: false, location_country: {not_in: [US]}}
      resource: {pseudonymize: true}
      action: [read, search, export, break_glass]
    expect: {at_most: pseudonym}
  - id: one-approval-opens-nothing
    description: a grant with fewer than two approvers opens nothing
    when:
      context: {grant: true, approvals: {max: 1}}
    expect:
      only_if_allowed_with: {context: {grant: false}}
  - id: a-ticket-opens-nothing-for-non-staff
    description: naming a ticket opens nothing for anyone but custodian staff
    when:
      principal:
        not: {custodian: true, role: [engineer, support, sre, security, investigator]}
      context: {ticket: {not_in: [""]}}
    expect:
      only_if_allowed_with: {context: {ticket: ""}}
"""

STAFF = '["engineer", "support", "sre", "security", "investigator"]'


def invariants() -> InvariantSet:
    extra = parse_invariants(EXTRA)
    return InvariantSet(version=1, invariants=[*shipped_invariants().invariants, *extra.invariants])


def policy_block(text: str, policy_id: str) -> tuple[int, int]:
    """Where the policy with this @id starts and ends (its closing ``};``)."""
    start = text.index(f'@id("{policy_id}")')
    end = text.index("};", start) + 2
    return start, end


def in_policy(policy_id: str, old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        start, end = policy_block(text, policy_id)
        body = text[start:end]
        assert old in body, f"{old!r} is not in {policy_id}"
        return text[:start] + body.replace(old, new, 1) + text[end:]

    return mutate


def drop(policy_id: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        start, end = policy_block(text, policy_id)
        return text[:start] + text[end:]

    return mutate


def add(policy: str) -> Callable[[str], str]:
    return lambda text: text + "\n" + policy


def chain(*steps: Callable[[str], str]) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return mutate


# name -> (mutation, invariants brute force must find broken: it has teeth)
PACKS: dict[str, tuple[Callable[[str], str], set[str]]] = {
    "shipped": (lambda t: t, set()),
    "drop-onshore-guardrail": (
        drop("protected-stays-onshore"),
        {"protected-stays-in-the-us"},
    ),
    "break-glass-for-moderators": (
        in_policy("break-glass-staff", STAFF, STAFF.replace('"sre"', '"sre", "moderator"')),
        {"break-glass-only-cleared-staff-with-mfa"},
    ),
    "break-glass-clearance-1": (
        in_policy(
            "break-glass-staff", "principal.clearance_level >= 2", "principal.clearance_level >= 1"
        ),
        {"break-glass-only-cleared-staff-with-mfa"},
    ),
    "not-protected-instead-of-allow-list": (
        in_policy(
            "staff-non-protected-with-purpose",
            """[
    Bastion::Classification::"interoperable",
    Bastion::Classification::"public"
  ].contains(resource.classification)""",
            'resource.classification != Bastion::Classification::"protected"',
        ),
        set(),  # the unknown-classification guardrail still holds it
    ),
    "not-protected-without-the-guardrail": (
        chain(
            in_policy(
                "staff-non-protected-with-purpose",
                """[
    Bastion::Classification::"interoperable",
    Bastion::Classification::"public"
  ].contains(resource.classification)""",
                'resource.classification != Bastion::Classification::"protected"',
            ),
            drop("unknown-classification-denied"),
        ),
        {"unknown-classification-denied"},
    ),
    "globalco-permit": (
        add(
            """@id("globalco-public")
@transform("clear")
permit (principal, action, resource is Bastion::Field)
when {
  principal.employer == "globalco" &&
  resource.classification == Bastion::Classification::"public"
};"""
        ),
        {"break-glass-only-cleared-staff-with-mfa"},
    ),
    "subject-count-conditions": (
        add(
            """@id("bulk-needs-approval")
forbid (principal, action, resource is Bastion::Field)
when { context.subject_count > 100 };

@id("small-break-glass-for-custodian")
@transform("clear")
permit (principal, action == Bastion::Action::"break_glass", resource is Bastion::Field)
when { principal.custodian && principal.mfa && context.subject_count <= 100 };"""
        ),
        {"break-glass-only-cleared-staff-with-mfa"},
    ),
    "ticket-like-patterns": (
        chain(
            in_policy(
                "staff-protected-with-purpose-and-ticket",
                'context.ticket != ""',
                'context.ticket like "SUP-*"',
            ),
            add(
                """@id("incident-tickets-read-public")
@transform("clear")
permit (
  principal,
  action in [Bastion::Action::"read", Bastion::Action::"search"],
  resource is Bastion::Field
)
when {
  context.ticket like "INC-*" &&
  resource.classification == Bastion::Classification::"public"
};"""
            ),
        ),
        {"a-ticket-opens-nothing-for-non-staff"},
    ),
    # Shapes the checker used to be blind to (each behind its own invariant): `is ... in` a
    # dataset, a time bomb on context.now, two like patterns, and an amr test that an empty
    # amr set slips past.
    "checker-blind-spots": (
        chain(
            add(
                """@id("users-break-glass")
@transform("clear")
permit (
  principal,
  action == Bastion::Action::"break_glass",
  resource is Bastion::Field in Bastion::Dataset::"users"
);

@id("grants-from-june")
@transform("clear")
permit (principal, action == Bastion::Action::"read", resource is Bastion::Field)
when { context.grant && context.now > datetime("2026-06-01") };

@id("p1-incidents")
@transform("clear")
permit (principal, action == Bastion::Action::"search", resource is Bastion::Field)
when { context.ticket like "INC-*" && context.ticket like "*-P1" };"""
            ),
            in_policy(
                "protected-requires-mfa",
                "!principal.mfa",
                'principal.amr.contains("pwd") && !principal.mfa',
            ),
        ),
        {
            "break-glass-only-cleared-staff-with-mfa",
            "one-approval-opens-nothing",
            "a-ticket-opens-nothing-for-non-staff",
            "nothing-protected-without-mfa",
        },
    ),
    "moderators-identifiers-clear": (
        in_policy("moderators-identifiers-masked", '@transform("mask")', '@transform("clear")'),
        {"moderators-identifiers-at-most-masked"},
    ),
}


@cache
def batch() -> Batch:
    return Batch(sample_requests(random.Random(SEED), REQUESTS))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PACKS))
def test_checker_finds_whatever_brute_force_finds(name: str) -> None:
    mutate, must_find = PACKS[name]
    text = mutate(default_pack_text())
    assert name == "shipped" or text != default_pack_text()
    compiled = compile_policies(text)
    declared = invariants()
    started = time.perf_counter()
    report = check_invariants(compiled, declared)
    checked = time.perf_counter() - started
    started = time.perf_counter()
    found = violations(batch(), compiled, declared.invariants)
    brute = time.perf_counter() - started
    broken = {r.invariant.id for r in report.broken}
    print(
        f"{name}: {len(batch().samples)} random requests in {brute:.1f} s, "
        f"check {checked:.1f} s, brute force broke {sorted(k for k, v in found.items() if v)}, "
        f"checker broke {sorted(broken)}"
    )
    for inv_id, bad in found.items():
        if bad:
            s = batch().samples[bad[0]]
            assert inv_id in broken, (
                f"unsound: brute force breaks {inv_id} ({len(bad)} requests, e.g. "
                f"{s.spec!r} {s.action} {s.resource} {s.context}) but the checker says it holds"
            )
    # The random search has teeth: it finds what the mutation planted.
    assert must_find <= {k for k, v in found.items() if v}, found
    assert must_find <= broken
    if name == "shipped":
        assert report.ok, [r.to_json() for r in report.broken]
    for result in report.broken:
        assert result.counterexample is not None
        replay(compiled, result.invariant, result.counterexample)


def test_the_brute_force_requests_are_varied() -> None:
    # Real values, not representatives: unlisted roles, countries, amr mixes, empty texts.
    samples = batch().samples
    roles = {s.spec.role for s in samples}
    assert {"intern", "analyst", "Engineer"} <= roles
    assert len({s.spec.location_country for s in samples}) > 20
    assert len({s.spec.amr for s in samples}) > 100
    assert () in {s.spec.amr for s in samples}
    assert {s.context["approvals"] for s in samples} == set(range(10))
    assert "" in {s.context["ticket"] for s in samples}
    assert {s.action for s in samples} == {
        "read",
        "search",
        "export",
        "break_glass",
        "write",
        "delete",
    }
    assert any(s.principal["covered_person"] for s in samples)
    assert any(s.principal["custodian"] and s.principal["mfa"] for s in samples)
    assert re.match(r"^p\d+$", samples[0].spec.id)
