"""Policy shapes an attacker (or a careless author) could use to slip a violation past the
invariant checker. For each one a violation is planted, shown real on a concrete request that
Cedar allows, and the checker must either find it (its counterexample replayed from outside)
or refuse the set as one it cannot check. It must never say the invariant holds.

Most plants open the ``break_glass`` action to someone who is not cleared custodian staff
with MFA, against ``break-glass-only-cleared-staff-with-mfa``; they are checked alone (the
checker's verdict on a plant does not depend on the rest of the pack), which keeps each check
short. Plants that work by hiding behind a guardrail are checked with the whole pack.
"""

from __future__ import annotations

from typing import Any

import pytest

from bastion.policy import PolicyRejected, compile_policies, default_pack_text
from bastion.policy.invariants import (
    InvariantSet,
    check_invariants,
    enforce_invariants,
    parse_invariants,
    shipped_invariants,
)
from bastion.policy.principal import PrincipalSpec, derive_attributes
from bastion.policy.symbolic import SymbolicError

from .invariant_oracle import Batch, Sample, replay, violations

BREAK_GLASS = "break-glass-only-cleared-staff-with-mfa"


def only(*ids: str) -> InvariantSet:
    return InvariantSet(
        version=1, invariants=[i for i in shipped_invariants().invariants if i.id in ids]
    )


def request(
    *,
    action: str = "break_glass",
    resource: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    **principal: Any,
) -> Sample:
    """A concrete request: an uncleared custodian intern in the US by default."""
    spec = PrincipalSpec(
        **{
            "id": "witness",
            "role": "intern",
            "employer": "custodian",
            "employer_country": "US",
            "location_country": "US",
            "clearance": "none",
            "amr": ("pwd",),
            **principal,
        }
    )
    return Sample(
        spec=spec,
        principal=derive_attributes(spec).cedar_attrs(),
        action=action,
        resource={
            "dataset": "videos",
            "name": "title",
            "type": "string",
            "classification": "public",
            "category": "none",
            "pseudonymize": False,
            **(resource or {}),
        },
        context={
            "purpose": "",
            "justification": "none",
            "ticket": "",
            "approvals": 0,
            "grant": False,
            "break_glass": False,
            "subject_count": 0,
            "now": "2026-01-01T00:00:00Z",
            **(context or {}),
        },
    )


def break_glass_when(condition: str, scope: str = "resource is Bastion::Field") -> str:
    return f"""
@id("planted")
@transform("clear")
permit (principal, action == Bastion::Action::"break_glass", {scope})
when {{ {condition} }};
"""


def must_find(text: str, witness: Sample, invariant: str = BREAK_GLASS) -> None:
    """The plant is real (Cedar allows the witness, which breaks the invariant) and the
    checker reports the invariant broken with a counterexample that replays."""
    compiled = compile_policies(text)
    declared = only(invariant)
    inv = next(i for i in declared.invariants if i.id == invariant)
    assert violations(Batch([witness]), compiled, [inv])[invariant] == [0], "not a real plant"
    report = check_invariants(compiled, declared)
    result = next(r for r in report.results if r.invariant.id == invariant)
    assert not result.holds, f"unsound: the checker says {invariant} holds"
    assert result.counterexample is not None
    replay(compiled, result.invariant, result.counterexample)


def must_refuse(text: str, witness: Sample | None, why: str) -> None:
    """The set is refused as one the checker cannot enumerate (never said to hold)."""
    compiled = compile_policies(text)
    if witness is not None:
        inv = only(BREAK_GLASS).invariants[0]
        assert violations(Batch([witness]), compiled, [inv])[BREAK_GLASS] == [0]
    with pytest.raises(SymbolicError, match=why):
        check_invariants(compiled, only(BREAK_GLASS))
    with pytest.raises(PolicyRejected, match="cannot be checked"):
        enforce_invariants(compiled, only(BREAK_GLASS))


# ---------------------------------------------------------------------- scopes and identities


def test_resource_is_field_in_a_dataset_scope() -> None:
    # `is ... in` used to be read as a bare `is`: the dataset was never a variable, so the
    # policy was tabulated only for a dataset no policy names and never matched.
    text = break_glass_when("true", 'resource is Bastion::Field in Bastion::Dataset::"users"')
    must_find(text, request(resource={"dataset": "users", "name": "email"}))


def test_resource_in_a_dataset_scope_and_condition() -> None:
    must_find(
        break_glass_when("true", 'resource in Bastion::Dataset::"users"'),
        request(resource={"dataset": "users", "name": "email"}),
    )
    must_find(
        break_glass_when('resource in Bastion::Dataset::"users"'),
        request(resource={"dataset": "users", "name": "email"}),
    )


def test_resource_equal_to_a_field_in_scope_and_condition() -> None:
    users_email = request(resource={"dataset": "users", "name": "email"})
    must_find(break_glass_when("true", 'resource == Bastion::Field::"users.email"'), users_email)
    must_find(break_glass_when('resource == Bastion::Field::"users.email"'), users_email)
    must_find(
        break_glass_when('resource is Bastion::Field in Bastion::Field::"users.email"'), users_email
    )


def test_a_principal_named_in_the_scope_is_refused() -> None:
    for scope in (
        'principal == Bastion::Principal::"alice"',
        'principal in Bastion::Principal::"alice"',
        'principal is Bastion::Principal in Bastion::Principal::"alice"',
    ):
        text = f"""
@id("planted")
@transform("clear")
permit ({scope}, action == Bastion::Action::"break_glass", resource is Bastion::Field);
"""
        must_refuse(text, None, "particular principal")


def test_an_attribute_of_an_entity_literal_is_refused() -> None:
    # The catalog's entities exist when the engine decides, not in the checker's requests:
    # the permit below errored in every table (so every request looked denied) but matches
    # in the engine.
    text = break_glass_when('Bastion::Dataset::"videos".name == "videos"')
    must_refuse(text, None, "attribute of an entity it names")


def test_the_action_read_in_a_condition_is_a_variable() -> None:
    # With an unconstrained action scope the action was not read: the table was evaluated at
    # one action (break_glass), so `action != break_glass` never matched there.
    text = """
@id("planted")
@transform("clear")
permit (principal, action, resource is Bastion::Field)
when { action != Bastion::Action::"break_glass" && context.break_glass };
"""
    must_find(text, request(action="read", context={"break_glass": True}))


def test_has_tests_are_always_true_on_bastions_requests() -> None:
    must_find(
        break_glass_when("principal has role && context has ticket && resource has category"),
        request(),
    )


def test_a_record_with_a_var_key_hides_nothing() -> None:
    # A record literal whose key is "Var" looked like a variable node: the walk stopped there
    # and context.ticket was never read.
    text = break_glass_when('{"Var": 1, "t": context.ticket} == {"Var": 1, "t": "INC-1"}')
    must_find(text, request(context={"ticket": "INC-1"}))


# ---------------------------------------------------------------------- strings


def test_like_with_wildcards() -> None:
    must_find(break_glass_when('context.ticket like "SUP-*"'), request(context={"ticket": "SUP-1"}))
    must_find(
        break_glass_when('context.ticket like "S*P-*1"'), request(context={"ticket": "SP-91"})
    )
    must_find(break_glass_when('context.purpose like "*"'), request())


def test_two_like_patterns_on_one_attribute() -> None:
    # One representative per pattern ("INC-x", "x-P1") matched neither both nor none.
    text = break_glass_when('context.ticket like "INC-*" && context.ticket like "*-P1"')
    must_find(text, request(context={"ticket": "INC-7-P1"}))
    text = break_glass_when('context.ticket like "INC-*" && !(context.ticket like "*7")')
    must_find(text, request(context={"ticket": "INC-8"}))


def test_like_patterns_whose_characters_are_the_usual_fillers() -> None:
    text = break_glass_when(
        'context.ticket like "XYZQ0xyzq1*" && context.ticket != "XYZQ0xyzq1" && '
        'context.ticket != "XYZQ0xyzq1X"'
    )
    must_find(text, request(context={"ticket": "XYZQ0xyzq1-"}))


def test_a_like_pattern_next_to_a_literal_it_matches() -> None:
    # The pattern's representative was "INC-x": when a policy names that very string, no
    # representative was left for the rest of the pattern.
    text = break_glass_when('context.ticket like "INC-*" && context.ticket != "INC-x"')
    must_find(text, request(context={"ticket": "INC-9"}))


def test_like_on_a_country_is_matched_upper_case() -> None:
    # Bastion upper-cases countries; a representative that only matched in lower case would
    # never reach the policy.
    text = break_glass_when(
        'principal.location_country like "C*" && principal.location_country != "CA"'
        " && !principal.covered_person"
    )
    must_find(text, request(location_country="CL"))


def test_two_attributes_compared_with_each_other() -> None:
    # ticket == role and role == "moderator": the ticket never had the value "moderator".
    text = break_glass_when('context.ticket == principal.role && principal.role == "moderator"')
    must_find(text, request(role="moderator", context={"ticket": "moderator"}))
    text = break_glass_when(
        'context.purpose == principal.employer && principal.employer == "custodian"'
    )
    must_find(text, request(context={"purpose": "custodian"}))


def test_an_attribute_compared_with_a_country() -> None:
    # The shared value must survive the derivation's upper-casing, and the ticket must be
    # able to take a country of concern that no policy names.
    text = break_glass_when(
        "principal.location_country == context.ticket && principal.covered_person"
    )
    must_find(text, request(location_country="RU", context={"ticket": "RU"}))


def test_three_attributes_pairwise_distinct() -> None:
    text = break_glass_when(
        "context.ticket != context.purpose && context.purpose != principal.role && "
        'context.ticket != principal.role && context.ticket != "" && context.purpose != ""'
    )
    must_find(text, request(context={"ticket": "a", "purpose": "b"}))


def test_a_set_literal_holding_an_attribute() -> None:
    # ["intern"].containsAny([principal.role]): the role was not an operand, so "intern" was
    # not one of its representatives.
    text = break_glass_when('["intern", "temp"].containsAny([principal.role])')
    must_find(text, request(role="temp"))


# ---------------------------------------------------------------------- amr


@pytest.mark.slow
def test_an_empty_amr_set_is_a_principal() -> None:
    # Every representative amr set held "pwd": a guardrail that forbids only password
    # logins let a principal with no amr at all through, unseen.
    text = default_pack_text().replace(
        "!principal.mfa\n}", 'principal.amr.contains("pwd") && !principal.mfa\n}', 1
    )
    assert text != default_pack_text()
    witness = request(
        action="read",
        role="engineer",
        amr=(),
        resource={"classification": "protected", "category": "none"},
        context={"purpose": "p", "ticket": "SUP-1"},
    )
    compiled = compile_policies(text)
    inv = only("nothing-protected-without-mfa")
    assert violations(Batch([witness]), compiled, inv.invariants)["nothing-protected-without-mfa"]
    report = check_invariants(compiled, inv)
    assert not report.ok
    cx = report.broken[0].counterexample
    assert cx is not None and "pwd" not in cx.principal["amr"]  # type: ignore[operator]
    replay(compiled, report.broken[0].invariant, cx)


@pytest.mark.slow
def test_amr_set_operations() -> None:
    must_find(break_glass_when("principal.amr.isEmpty()"), request(amr=()))
    must_find(
        break_glass_when('principal.amr.containsAll(["hwk", "otp"])'),
        request(amr=("hwk", "otp")),
    )
    must_find(break_glass_when('principal.amr == ["kba"]'), request(amr=("kba",)))
    must_find(
        break_glass_when('principal.amr.containsAny(["kba", "pin"]) && !principal.mfa'),
        request(amr=("pin",)),
    )
    must_find(
        break_glass_when('principal.amr.contains(context.ticket) && context.ticket != "pwd"'),
        request(amr=("pwd", "x"), context={"ticket": "x"}),
    )


# ---------------------------------------------------------------------- numbers


def test_numeric_comparisons_with_several_literals() -> None:
    must_find(
        break_glass_when("context.approvals > 3 && context.approvals < 5"),
        request(context={"approvals": 4}),
    )
    must_find(
        break_glass_when("context.subject_count >= 10 && context.subject_count <= 10"),
        request(context={"subject_count": 10}),
    )
    must_find(
        break_glass_when("principal.clearance_level < 2 && principal.clearance_level > 0"),
        request(clearance="internal"),
    )
    must_find(
        break_glass_when("context.subject_count > 1000000"),
        request(context={"subject_count": 1000001}),
    )


def test_the_largest_long_is_a_representative() -> None:
    # Its neighbour above does not exist (Cedar would refuse the request): not a crash.
    must_find(
        break_glass_when("context.subject_count >= 9223372036854775807"),
        request(context={"subject_count": 9223372036854775807}),
    )


def test_numbers_compared_with_each_other() -> None:
    # approvals and subject_count strictly between 5 and 8, in order: two values in one gap.
    text = break_glass_when(
        "context.approvals > context.subject_count && context.subject_count > 5 && "
        "context.approvals < 8"
    )
    must_find(text, request(context={"approvals": 7, "subject_count": 6}))
    text = break_glass_when(
        "context.approvals == principal.clearance_level && context.approvals > 2"
    )
    must_find(text, request(clearance="restricted", context={"approvals": 3}))


def test_if_then_else() -> None:
    # The comparison's operand is an if-then-else: the literal 100 was not given to
    # subject_count, which never exceeded it.
    text = break_glass_when("(if context.grant then context.subject_count else 0) > 100")
    must_find(text, request(context={"grant": True, "subject_count": 101}))
    text = break_glass_when('if principal.mfa then false else principal.role == "temp"')
    must_find(text, request(role="temp"))


def test_arithmetic_on_an_attribute_is_refused() -> None:
    # approvals * 10 between 45 and 55 holds only at 5, which no literal is next to.
    text = break_glass_when("context.approvals * 10 >= 45 && context.approvals * 10 <= 55")
    must_refuse(text, request(context={"approvals": 5}), "computes with an attribute")
    must_refuse(
        break_glass_when("context.approvals - 7 >= 2"),
        request(context={"approvals": 9}),
        "computes with an attribute",
    )


def test_an_erroring_forbid_is_refused_not_trusted() -> None:
    # Overflow errors at run time (the engine denies: fail closed); the checker refuses to
    # reason about arithmetic rather than guess where it errors.
    text = (
        break_glass_when("principal.custodian")
        + """
@id("overflowing")
forbid (principal, action, resource is Bastion::Field)
when { principal.clearance_level + 9223372036854775807 > 0 };
"""
    )
    must_refuse(text, None, "computes with an attribute")


# ---------------------------------------------------------------------- time


def test_a_time_bomb_is_found() -> None:
    # context.now used to be fixed at one instant (2026-01-01): a permit that starts later
    # was never seen to match.
    text = break_glass_when('context.now > datetime("2026-06-01")')
    must_find(text, request(context={"now": "2026-07-01T00:00:00Z"}))
    text = break_glass_when(
        'context.now >= datetime("2027-01-01T00:00:00.001Z") && '
        'context.now < datetime("2027-01-01T01:00:00.003+0100")'
    )
    must_find(text, request(context={"now": "2027-01-01T00:00:00.002Z"}))


def test_an_expiring_forbid_is_found() -> None:
    # The guardrail stops at a date: from then on the planted permit opens break-glass.
    text = (
        break_glass_when("principal.custodian")
        + """
@id("until-2027")
forbid (principal, action, resource is Bastion::Field)
when { context.now < datetime("2027-01-01") };
"""
    )
    must_find(text, request(context={"now": "2027-02-01T00:00:00Z"}))


def test_instants_far_from_now() -> None:
    must_find(
        break_glass_when('context.now < datetime("0005-01-01")'),
        request(context={"now": "0004-12-31T23:59:59Z"}),
    )
    # The instant after the last one Python can name: refused, not a crash.
    must_refuse(
        break_glass_when('context.now > datetime("9999-12-31T23:59:59.999Z")'),
        None,
        "out of range",
    )


def test_context_now_other_than_compared_with_a_literal_is_refused() -> None:
    for condition in (
        'context.now.toDate() > datetime("2026-06-01")',
        'context.now.offset(duration("1d")) > datetime("2026-06-01")',
        'context.now > datetime("2026-06-01").offset(duration("1d"))',
        'context.now.toTime() > duration("9h")',
    ):
        must_refuse(break_glass_when(condition), None, "context.now")


def test_a_policy_reading_context_now_is_checked_without_crashing() -> None:
    text = default_pack_text() + break_glass_when(
        'principal.custodian && principal.role == "sre" && principal.clearance_level >= 2 && '
        'principal.mfa && context.now < datetime("2026-01-01")'
    )
    report = check_invariants(compile_policies(text), only(BREAK_GLASS))
    assert report.ok


# ---------------------------------------------------------------------- what the schema stops


@pytest.mark.parametrize(
    "condition",
    [
        'context.approvals == "3"',  # a Long compared with a String
        'context.approvals < "3"',
        "resource.requester == principal",  # an AccessRequest attribute, absent on Field
        'context.ticket < "b"',
        'decimal(context.purpose).greaterThan(decimal("1.0"))',
    ],
)
def test_shapes_the_validator_refuses(condition: str) -> None:
    with pytest.raises(PolicyRejected):
        compile_policies(break_glass_when(condition))


def test_an_unless_reading_an_attribute_absent_on_field_is_refused() -> None:
    text = (
        break_glass_when("true")
        + """
@id("only-requesters")
forbid (principal, action, resource)
unless { resource.requester.custodian };
"""
    )
    with pytest.raises(PolicyRejected, match="requester"):
        compile_policies(text)


def test_the_whole_context_as_a_value_is_refused() -> None:
    text = break_glass_when(
        'context == {"purpose": "", "justification": Bastion::Justification::"none", '
        '"ticket": "", "now": datetime("2026-01-01"), "approvals": 0, "grant": false, '
        '"break_glass": false, "subject_count": 0}'
    )
    try:
        compiled = compile_policies(text)
    except PolicyRejected:
        return  # the validator refuses it: as good
    with pytest.raises(SymbolicError, match="whole context"):
        check_invariants(compiled, only(BREAK_GLASS))


# ---------------------------------------------------------------------- the domain itself


def test_naming_every_fallback_country_does_not_crash() -> None:
    # The one non-US, non-named country was picked from four; naming all four crashed.
    text = break_glass_when(
        '["DE", "FR", "JP", "BR"].contains(principal.location_country) && principal.mfa'
    )
    must_find(text, request(location_country="FR", amr=("mfa",)))
    text = break_glass_when(
        '!["US", "DE", "FR", "JP", "BR"].contains(principal.location_country) && '
        '!principal.covered_person && principal.location_country != ""'
    )
    must_find(text, request(location_country="NZ"))


def test_too_many_principal_values_are_refused_not_enumerated_forever() -> None:
    roles = ", ".join(f'"r{i}"' for i in range(400))
    employers = ", ".join(f'"e{i}"' for i in range(400))
    text = break_glass_when(
        f"[{roles}].contains(principal.role) && [{employers}].contains(principal.employer)"
    )
    must_refuse(text, None, "too many principal attribute values")


# ---------------------------------------------------------------------- careless invariants


@pytest.mark.parametrize(
    ("when", "why"),
    [
        ("resource: {classification: protectd}", "unknown value 'protectd'"),
        ("resource: {category: {not_in: [non]}}", "unknown value"),
        ("context: {approvals: '3'}", "is not a long"),
        ("context: {grant: 'yes'}", "is not a bool"),
        ("context: {justification: breakglass}", "unknown value"),
        ("principal: {location_country: us}", "upper-case"),
        ("principal: {clearance: secret}", "unknown value 'secret'"),
        ("principal: {amr: [pwd]}", "use mfa"),
        ("principal: {role: {min: 2}}", "numbers only"),
        ("principal: {clearance_level: {minimum: 2}}", "Extra inputs"),
        ("action: []", "matches nothing"),
        ("principal: {not: {}}", "non-empty"),
    ],
)
def test_a_condition_that_can_never_hold_is_refused(when: str, why: str) -> None:
    # Each would make the invariant hold vacuously (or crash the check).
    from bastion.errors import InputError

    text = f"""
version: 1
invariants:
  - id: x
    description: d
    when: {{{when}}}
    expect: deny
"""
    with pytest.raises(InputError, match=why):
        parse_invariants(text)


def test_an_only_if_value_that_does_not_exist_is_refused() -> None:
    from bastion.errors import InputError

    text = """
version: 1
invariants:
  - id: x
    description: d
    expect: {only_if_allowed_with: {context: {justification: nope}}}
"""
    with pytest.raises(InputError, match="unknown value 'nope'"):
        parse_invariants(text)


def test_a_requirement_narrows_the_invariants_scope_never_replaces_it() -> None:
    # The invariant is about moderators; a requirement naming another role must check
    # nobody, not the other role (its counterexample would be outside the invariant).
    text = """
version: 1
invariants:
  - id: moderators-no-break-glass
    description: d
    when:
      principal: {role: moderator}
    require:
      - when: {principal: {role: engineer}, action: [break_glass]}
        expect: deny
"""
    pack = compile_policies(default_pack_text())
    report = check_invariants(pack, parse_invariants(text))
    assert report.ok, [r.to_json() for r in report.broken]
    nested = """
version: 1
invariants:
  - id: non-staff-no-break-glass
    description: d
    when:
      principal: {not: {role: [engineer, support, sre, security, investigator]}}
    require:
      - when: {principal: {not: {custodian: false}}, action: [break_glass]}
        expect: deny
"""
    # Both negations apply: custodian employees who are not staff; break-glass opens nothing
    # to them (a negation that replaced the other would have checked every custodian).
    report = check_invariants(pack, parse_invariants(nested))
    assert report.ok, [r.to_json() for r in report.broken]
