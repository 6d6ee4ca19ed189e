"""Every rule of the shipped policy pack, allowed and denied, through the real Cedar engine."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.catalog import default_catalog, parse_catalog
from bastion.clock import FixedClock
from bastion.errors import InputError
from bastion.policy import (
    Action,
    ApprovalResource,
    GrantScope,
    JustificationType,
    PlanRequest,
    PolicyEngine,
    PrincipalConfig,
    PrincipalSpec,
    Transform,
    default_policies,
)
from bastion.policy.engine import catalog_entities

from .conftest import PEOPLE, make

PROTECTED_USERS = ["name", "email", "phone", "birth_date", "ip_address", "location"]
ALL_USERS = [f.name for f in default_catalog().dataset("users").fields]


def becomes(
    engine: PolicyEngine, who: PrincipalSpec, dataset: str = "users", **kw: Any
) -> dict[str, str]:
    plan = engine.plan(who, PlanRequest(dataset=dataset, **kw))
    return {f.field: f.transform.value for f in plan.fields}


WORK = {"purpose": "support case 1234", "ticket": "SUP-1234", "ticket_subjects": ("u1", "u2")}


# ---------------------------------------------------------------- covered persons


@pytest.mark.parametrize("who", ["covered_engineer", "covered_staff"])
def test_covered_persons_denied_every_protected_field(engine: PolicyEngine, who: str) -> None:
    plan = engine.plan(PEOPLE[who], PlanRequest(dataset="users", **WORK))
    for name in PROTECTED_USERS:
        fp = plan.field(name)
        assert fp.transform is Transform.DENY
        assert "covered-persons-denied-protected" in fp.policies


def test_covered_person_denied_even_with_a_grant_and_break_glass(engine: PolicyEngine) -> None:
    # A custodian engineer who is physically in Hong Kong: the staff permit matches, a grant
    # and break-glass are present, and the forbid still wins.
    who = PEOPLE["covered_staff"]
    for kind in ("approval", "break-glass"):
        grant = GrantScope(
            "g1",
            kind,
            "users",
            Action.READ,
            frozenset(ALL_USERS),
            frozenset({"u1"}),
            3,
            JustificationType.BREAK_GLASS,
        )
        plan = engine.plan(who, PlanRequest(dataset="users", **WORK), grant=grant)
        assert all(plan.field(n).transform is Transform.DENY for n in PROTECTED_USERS)


@pytest.mark.parametrize("country", ["CN", "HK", "MO", "CU", "IR", "KP", "RU", "VE"])
def test_every_country_of_concern_makes_a_covered_person(
    engine: PolicyEngine, country: str
) -> None:
    by_employer = make("x", "engineer", employer="acme", employer_country=country)
    by_location = make("y", "engineer", location_country=country)
    for who in (by_employer, by_location):
        attrs = engine.attributes(who)
        assert attrs.covered_person and not attrs.custodian
        assert becomes(engine, who, **WORK)["email"] == "deny"


def test_designated_covered_employer(clock: FixedClock) -> None:
    config = PrincipalConfig(covered_employers=frozenset({"parentco-us"}))
    engine = PolicyEngine(
        default_policies(), default_catalog(), clock=clock, principal_config=config
    )
    who = make("z", "engineer", employer="parentco-us", employer_country="US")
    attrs = engine.attributes(who)
    assert attrs.covered_person
    assert "designated" in attrs.covered_reasons[0]


def test_covered_person_gets_no_person_linkable_identifier(engine: PolicyEngine) -> None:
    # 28 CFR 202 counts pseudonymized identifiers: a covered person gets neither the account
    # id's pseudonym nor the device ids', only non-identifying interoperable fields.
    plan = engine.plan(PEOPLE["covered_engineer"], PlanRequest(dataset="users"))
    assert plan.field("user_id").transform is Transform.DENY
    assert plan.field("device_ids").transform is Transform.DENY
    assert "covered-persons-no-linkable-identifiers" in plan.field("user_id").policies
    assert plan.field("language").transform is Transform.CLEAR
    # An engineer abroad who is not a covered person still follows accounts by pseudonym.
    assert becomes(engine, PEOPLE["engineer_abroad"])["user_id"] == "pseudonym"


def test_covered_person_gets_no_linkable_identifier_in_any_dataset(engine: PolicyEngine) -> None:
    for ds in default_catalog().datasets:
        plan = engine.plan(PEOPLE["covered_engineer"], PlanRequest(dataset=ds.name))
        for fp in plan.fields:
            spec = ds.field(fp.field)
            if spec.pseudonymize or spec.category is not None:
                assert not fp.released, f"{ds.name}.{fp.field} reached a covered person"


# ---------------------------------------------------------------- custodian staff


def test_staff_read_protected_with_purpose_and_ticket(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff"], PlanRequest(dataset="users", **WORK))
    assert plan.decision == "allow"
    for name in ("name", "email", "phone", "birth_date", "ip_address"):
        assert plan.field(name).transform is Transform.CLEAR
        assert plan.field(name).policies == ("staff-protected-with-purpose-and-ticket",)
    # The ticket's row filter binds the whole response.
    assert plan.row_filter is not None
    assert plan.allowed_subjects == frozenset({"u1", "u2"})
    assert plan.permits_subject("u1") and not plan.permits_subject("u3")


def test_staff_without_ticket_get_no_protected_field(engine: PolicyEngine) -> None:
    out = becomes(engine, PEOPLE["staff"], purpose="debugging signup")
    assert all(out[n] == "deny" for n in PROTECTED_USERS)
    assert out["country"] == "clear"  # non-protected needs only a purpose


def test_staff_without_purpose_get_nothing(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff"], PlanRequest(dataset="users", ticket="SUP-1"))
    assert plan.decision == "deny"
    assert plan.field("country").reason == "no policy permits it (default deny)"


def test_staff_without_mfa_denied_protected(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff_no_mfa"], PlanRequest(dataset="users", **WORK))
    assert plan.field("email").transform is Transform.DENY
    assert "protected-requires-mfa" in plan.field("email").policies
    assert plan.field("country").transform is Transform.CLEAR


def test_staff_abroad_denied_protected(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff_abroad"], PlanRequest(dataset="users", **WORK))
    assert plan.field("email").transform is Transform.DENY
    assert "protected-stays-onshore" in plan.field("email").policies


# ---------------------------------------------------------------- moderators


def test_moderators_see_content_with_identifiers_masked(engine: PolicyEngine) -> None:
    out = becomes(engine, PEOPLE["moderator"])
    assert out["email"] == "mask" and out["phone"] == "mask" and out["name"] == "mask"
    assert out["user_id"] == "pseudonym" and out["device_ids"] == "pseudonym"
    assert out["language"] == "clear" and out["region"] == "clear"
    assert out["location"] == "deny"
    videos = becomes(engine, PEOPLE["moderator"], dataset="videos")
    assert videos["title"] == "clear"
    assert videos["creator_id"] == "pseudonym"
    assert videos["upload_ip"] == "mask"


def test_moderators_cannot_export(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["moderator"], PlanRequest(dataset="videos", action=Action.EXPORT))
    assert plan.decision == "deny"


# ---------------------------------------------------------------- engineers abroad


@pytest.mark.parametrize("who", ["engineer_abroad"])
def test_engineers_abroad_get_interoperable_pseudonymized(engine: PolicyEngine, who: str) -> None:
    plan = engine.plan(PEOPLE[who], PlanRequest(dataset="events"))
    out = {f.field: f.transform.value for f in plan.fields}
    assert out["user_id"] == "pseudonym" and out["device_id"] == "pseudonym"
    assert out["watch_time_s"] == "clear" and out["event_type"] == "clear"
    users = becomes(engine, PEOPLE[who])
    assert all(users[n] == "deny" for n in PROTECTED_USERS)
    assert users["signup_date"] == "clear"


# ---------------------------------------------------------------- ad partner


def test_ad_partner_gets_nothing_row_level(engine: PolicyEngine) -> None:
    for ds in ("users", "videos", "events"):
        for action in (Action.READ, Action.SEARCH, Action.EXPORT):
            plan = engine.plan(PEOPLE["ad_partner"], PlanRequest(dataset=ds, action=action))
            assert plan.decision == "deny"
            assert all("ad-partner-nothing-row-level" in f.policies for f in plan.fields)


def test_ad_partner_analyzes_through_the_clean_room(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["ad_partner"], PlanRequest(dataset="events", action=Action.ANALYZE))
    assert plan.decision == "allow" and plan.policies == ("ad-partner-clean-room",)
    denied = engine.plan(PEOPLE["moderator"], PlanRequest(dataset="events", action=Action.ANALYZE))
    assert denied.decision == "deny"


# ---------------------------------------------------------------- auditors and subjects


def test_auditors_read_any_access_history_but_no_data(engine: PolicyEngine) -> None:
    assert engine.can_read_access_history(PEOPLE["auditor"], "u1").allowed
    assert engine.can_read_access_history(PEOPLE["auditor"], "u999").allowed
    assert engine.plan(PEOPLE["auditor"], PlanRequest(dataset="users")).decision == "deny"


def test_subjects_read_only_their_own_access_history(engine: PolicyEngine) -> None:
    d = engine.can_read_access_history(PEOPLE["subject"], "u1")
    assert d.allowed and d.policy_ids == ("subjects-read-own-access-history",)
    assert not engine.can_read_access_history(PEOPLE["subject"], "u2").allowed
    assert not engine.can_read_access_history(PEOPLE["staff"], "u1").allowed
    assert engine.plan(PEOPLE["subject"], PlanRequest(dataset="users")).decision == "deny"


# ---------------------------------------------------------------- approvals required


def test_precise_geolocation_needs_two_approvers(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff"], PlanRequest(dataset="users", **WORK))
    loc = plan.field("location")
    assert loc.transform is Transform.DENY
    assert loc.needs_approval and loc.approvers_required == 2
    assert loc.transform_if_approved is Transform.CLEAR
    assert plan.approval is not None
    assert plan.approval.approvers == 2 and plan.approval.fields == ("location",)
    assert plan.approval.policies == ("sensitive-categories-need-two-approvers",)


def _grant(fields: list[str], approvals: int, kind: str = "approval") -> GrantScope:
    return GrantScope(
        "gr_test",
        kind,
        "users",
        Action.READ,
        frozenset(fields),
        frozenset({"u1"}),
        approvals,  # type: ignore[arg-type]
        JustificationType.CUSTOMER_INITIATED_SUPPORT
        if kind == "approval"
        else JustificationType.BREAK_GLASS,
    )


def test_a_grant_with_enough_approvals_lifts_the_forbid(engine: PolicyEngine) -> None:
    plan = engine.plan(
        PEOPLE["staff"], PlanRequest(dataset="users", **WORK), grant=_grant(["location"], 2)
    )
    loc = plan.field("location")
    assert loc.transform is Transform.CLEAR and loc.via_grant
    assert plan.grant_id == "gr_test"
    # Rows: the ticket's subjects intersected with the grant's.
    assert plan.allowed_subjects == frozenset({"u1"})


def test_a_grant_with_too_few_approvals_does_not(engine: PolicyEngine) -> None:
    plan = engine.plan(
        PEOPLE["staff"], PlanRequest(dataset="users", **WORK), grant=_grant(["location"], 1)
    )
    assert plan.field("location").transform is Transform.DENY


def test_a_grant_never_widens_who_may_read(engine: PolicyEngine) -> None:
    # The moderator has no permit on location: an approval lifts the forbid, nothing permits.
    plan = engine.plan(
        PEOPLE["moderator"],
        PlanRequest(dataset="users", fields=("location",)),
        grant=_grant(["location"], 3),
    )
    assert plan.field("location").transform is Transform.DENY


def test_break_glass_releases_to_cleared_staff_only(engine: PolicyEngine) -> None:
    req = PlanRequest(dataset="users", fields=("email", "location"), purpose="outage")
    plan = engine.plan(PEOPLE["staff"], req, grant=_grant(["email", "location"], 0, "break-glass"))
    assert plan.break_glass
    assert plan.released == {"email": Transform.CLEAR, "location": Transform.CLEAR}
    low = make("junior", "engineer", clearance="internal")
    plan = engine.plan(low, req, grant=_grant(["email", "location"], 0, "break-glass"))
    assert plan.decision == "deny"


def test_break_glass_does_not_lift_a_forbid_below_clearance_2(engine: PolicyEngine) -> None:
    # The review's finding: an internal-clearance engineer with a purpose and a ticket (so the
    # ordinary staff permit matches) used break-glass to lift the two-approver forbid on
    # location. Break-glass is its own action now, allowed only by the break-glass permit.
    low = make("junior", "engineer", clearance="internal")
    grant = _grant(["location"], 0, "break-glass")
    plan = engine.plan(low, PlanRequest(dataset="users", fields=("location",), **WORK), grant=grant)
    assert plan.field("location").transform is Transform.DENY
    assert not plan.break_glass or plan.decision == "deny"


@pytest.mark.parametrize(
    "who",
    [
        make("nomfa", "engineer", amr=("pwd",)),
        make("mod", "moderator", clearance="restricted"),
        make("ext", "engineer", employer="parentco", employer_country="SG"),
    ],
)
def test_break_glass_needs_custodian_staff_with_mfa(
    engine: PolicyEngine, who: PrincipalSpec
) -> None:
    grant = _grant(["email", "location"], 0, "break-glass")
    req = PlanRequest(dataset="users", fields=("email", "location"), **WORK)
    plan = engine.plan(who, req, grant=grant)
    assert plan.field("location").transform is Transform.DENY


def test_break_glass_never_opens_search_or_export(engine: PolicyEngine) -> None:
    for action in (Action.SEARCH, Action.EXPORT):
        grant = GrantScope(
            "g1",
            "break-glass",
            "users",
            action,
            frozenset({"location"}),
            frozenset({"u1"}),
            0,
            JustificationType.BREAK_GLASS,
        )
        req = PlanRequest(dataset="users", action=action, fields=("location",), **WORK)
        plan = engine.plan(PEOPLE["staff"], req, grant=grant)
        assert plan.field("location").transform is Transform.DENY


def test_protected_export_needs_two_approvers(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["staff"], PlanRequest(dataset="users", action=Action.EXPORT, **WORK))
    assert plan.field("email").needs_approval and plan.field("email").approvers_required == 2
    assert plan.field("country").transform is Transform.CLEAR


def test_human_omic_needs_three_approvers(clock: FixedClock) -> None:
    text = """
version: 1
datasets:
  genomes:
    record_id: sample_id
    subject_key: person_id
    fields:
      sample_id: {type: string, classification: interoperable, nullable: false}
      person_id: {type: string, classification: interoperable, pseudonymize: true, nullable: false,
                  category: covered_personal_identifiers}
      variants: {type: string, classification: protected, category: human_omic}
"""
    catalog = parse_catalog(text, "genomes.yaml")
    engine = PolicyEngine(default_policies(), catalog, clock=clock)
    plan = engine.plan(
        PEOPLE["staff"],
        PlanRequest(dataset="genomes", fields=("variants",), purpose="research", ticket="R-1"),
    )
    assert plan.approval is not None and plan.approval.approvers == 3
    assert plan.approval.policies == ("human-omic-needs-three-approvers",)


# ---------------------------------------------------------------- approve / administer


def _resource(requester: str = "alice") -> ApprovalResource:
    return ApprovalResource("ar_1", requester, "custodian", "users", frozenset(), None)


def test_security_and_privacy_officers_approve(engine: PolicyEngine) -> None:
    assert engine.can_approve(PEOPLE["officer1"], _resource()).allowed
    assert engine.can_approve(PEOPLE["officer2"], _resource()).allowed


@pytest.mark.parametrize("who", ["staff", "moderator", "officer_no_mfa", "auditor", "nobody"])
def test_others_cannot_approve(engine: PolicyEngine, who: str) -> None:
    assert not engine.can_approve(PEOPLE[who], _resource()).allowed


def test_covered_officer_cannot_approve(engine: PolicyEngine) -> None:
    officer = make("ivan", "security_officer", clearance="restricted", location_country="RU")
    d = engine.can_approve(officer, _resource())
    assert not d.allowed and "covered-persons-cannot-approve-or-administer" in d.policy_ids


def test_policy_forbids_self_approval(engine: PolicyEngine) -> None:
    d = engine.can_approve(PEOPLE["officer1"], _resource(requester="sam"))
    assert not d.allowed and d.policy_ids == ("no-self-approval",)


def test_policy_admins_administer(engine: PolicyEngine) -> None:
    assert engine.can_administer(PEOPLE["policy_admin"]).allowed
    assert not engine.can_administer(PEOPLE["staff"]).allowed
    assert not engine.can_administer(make("x", "policy_admin", location_country="CN")).allowed


# ---------------------------------------------------------------- default deny, bad names


def test_default_deny_for_an_unknown_role(engine: PolicyEngine) -> None:
    plan = engine.plan(PEOPLE["nobody"], PlanRequest(dataset="users", **WORK))
    assert plan.decision == "deny"
    assert all(
        f.reason == "no policy permits it (default deny)"
        for f in plan.fields
        if f.field != "location"
    )


def test_unknown_dataset_and_field_are_input_errors(engine: PolicyEngine) -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        engine.plan(PEOPLE["staff"], PlanRequest(dataset="nope"))
    with pytest.raises(InputError) as err:
        engine.plan(PEOPLE["staff"], PlanRequest(dataset="users", fields=("email", "ssn")))
    assert err.value.field == "ssn"


def test_plans_are_deterministic_and_cached(engine: PolicyEngine) -> None:
    req = PlanRequest(dataset="users", **WORK)
    first = engine.plan(PEOPLE["covered_engineer"], req)
    assert engine.plan(PEOPLE["covered_engineer"], req) is first
    assert first.field("location").policies == (
        "covered-persons-denied-protected",
        "protected-stays-onshore",
        "covered-persons-no-linkable-identifiers",
        "sensitive-categories-need-two-approvers",
    )


def test_engine_requests_conform_to_the_schema(engine: PolicyEngine) -> None:
    """The engine skips schema checks at decision time; prove its requests would pass them."""
    import json

    import cedarpy

    from bastion.policy.compiler import bastion_schema
    from bastion.policy.engine import principal_entity

    attrs = engine.attributes(PEOPLE["staff"])
    entities = [*catalog_entities(default_catalog()), principal_entity(attrs)]
    cedarpy.Entities.from_json_str(json.dumps(entities), bastion_schema())  # raises if not
    request = {
        "principal": {"type": "Bastion::Principal", "id": "alice"},
        "action": {"type": "Bastion::Action", "id": "read"},
        "resource": {"type": "Bastion::Field", "id": "users.email"},
        "context": engine._context(purpose="p", ticket="t"),
    }
    res = cedarpy.is_authorized(
        request, engine.policies.policy_set, json.dumps(entities), schema=bastion_schema()
    )
    assert res.allowed and not res.diagnostics.errors
