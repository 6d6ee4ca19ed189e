"""Policy sets load only when they parse, validate against the schema and follow the
annotation rules; forbid wins; default deny; the least revealing transform wins."""

from __future__ import annotations

import re

import pytest

from bastion.catalog import Classification, SensitiveCategory, default_catalog
from bastion.clock import FixedClock
from bastion.policy import (
    PlanRequest,
    PolicyEngine,
    PolicyRejected,
    Transform,
    compile_policies,
    default_pack_text,
    default_policies,
    schema_text,
)
from bastion.policy.vocabulary import JustificationType

from .conftest import PEOPLE

PERMIT_MOD = """
@id("mods")
@transform("clear")
permit (principal, action == Bastion::Action::"read", resource is Bastion::Field)
when { principal.role == "moderator" };
"""


def rejected(text: str) -> list[str]:
    with pytest.raises(PolicyRejected) as err:
        compile_policies(text)
    return err.value.errors


def test_the_shipped_pack_loads() -> None:
    compiled = default_policies()
    assert len(compiled.policies) >= 20
    assert "covered-persons-denied-protected" in compiled.ids
    assert not compiled.uses_now


def test_a_policy_naming_an_unknown_attribute_is_rejected() -> None:
    text = PERMIT_MOD.replace('principal.role == "moderator"', 'principal.nationality == "US"')
    errors = rejected(text)
    assert len(errors) == 1
    assert errors[0].startswith("mods:") and "nationality" in errors[0]


def test_unknown_context_attribute_and_enum_value_are_rejected() -> None:
    assert any(
        "urgent" in e for e in rejected(PERMIT_MOD.replace("principal.role", "context.urgent"))
    )
    bad_enum = PERMIT_MOD.replace(
        'principal.role == "moderator"', 'resource.category == Bastion::Category::"helth"'
    )
    assert any("helth" in e for e in rejected(bad_enum))


def test_unknown_action_and_type_errors_are_rejected() -> None:
    assert rejected(PERMIT_MOD.replace('Action::"read"', 'Action::"delete"'))
    assert rejected(
        PERMIT_MOD.replace('principal.role == "moderator"', "principal.clearance_level")
    )


def test_parse_errors_empty_sets_and_templates_are_rejected() -> None:
    assert "does not parse" in rejected("permit (principal, action resource);")[0]
    assert "empty" in rejected("// nothing here\n")[0]
    template = '@id("t") @transform("clear") permit (principal == ?principal, action, resource);'
    assert "templates" in rejected(template)[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PERMIT_MOD.replace('@id("mods")\n', ""), "needs an @id"),
        (PERMIT_MOD + PERMIT_MOD, "@id is used twice"),
        (PERMIT_MOD.replace('@transform("clear")\n', ""), "must say how, with @transform"),
        (PERMIT_MOD.replace('"clear"', '"encrypt"'), "@transform must be one of"),
        (PERMIT_MOD.replace("@transform", "@tranform"), "unknown annotation @tranform"),
        (
            PERMIT_MOD.replace(
                '@transform("clear")', '@transform("clear") @row_filter("everyone")'
            ),
            "@row_filter must be one of",
        ),
        (
            PERMIT_MOD.replace('@transform("clear")', '@transform("clear") @approvers("2")'),
            "@approvers belongs only on forbids",
        ),
        (
            '@id("f") @approvers("2") forbid (principal, action, resource is Bastion::Field) '
            "when { resource.pseudonymize };",
            "no grant can lift",
        ),
        (
            '@id("f") @approvers("12") forbid (principal, action, resource is Bastion::Field) '
            "unless { context.grant };",
            "from 1 to 9",
        ),
        (
            '@id("h") @transform("mask") permit (principal, action == Bastion::Action::"read", '
            "resource is Bastion::AccessHistory);",
            "only on permits that release fields",
        ),
    ],
)
def test_annotation_rules(text: str, message: str) -> None:
    assert any(message in e for e in rejected(text)), rejected(text)


def test_rejection_is_an_input_error_naming_the_source() -> None:
    with pytest.raises(PolicyRejected) as err:
        compile_policies("oops", source="mine.cedar")
    assert err.value.file == "mine.cedar"
    assert "mine.cedar" in str(err.value)


def test_schema_enums_match_the_catalog_and_vocabulary() -> None:
    text = schema_text()

    def members(name: str) -> set[str]:
        m = re.search(rf"entity {name} enum \[(.*?)\];", text, re.S)
        assert m, name
        return set(re.findall(r'"([^"]+)"', m.group(1)))

    assert members("Classification") == {c.value for c in Classification}
    assert members("Category") == {c.value for c in SensitiveCategory} | {"none"}
    assert members("Justification") == {j.value for j in JustificationType} | {"none"}


# ---------------------------------------------------------------- semantics


def _engine(text: str) -> PolicyEngine:
    return PolicyEngine(compile_policies(text), default_catalog(), clock=FixedClock())


def test_default_deny_with_no_matching_permit() -> None:
    plan = _engine(PERMIT_MOD).plan(PEOPLE["staff"], PlanRequest(dataset="users"))
    assert plan.decision == "deny"
    assert plan.field("email").reason == "no policy permits it (default deny)"


def test_forbid_wins_over_any_permit() -> None:
    text = (
        PERMIT_MOD
        + """
@id("no-email")
forbid (principal, action, resource == Bastion::Field::"users.email");
"""
    )
    plan = _engine(text).plan(PEOPLE["moderator"], PlanRequest(dataset="users"))
    assert plan.field("email").transform is Transform.DENY
    assert plan.field("email").policies == ("no-email",)
    assert plan.field("phone").transform is Transform.CLEAR


def test_least_revealing_transform_wins_among_permits() -> None:
    text = (
        PERMIT_MOD
        + """
@id("mods-email-masked")
@transform("mask")
permit (principal, action, resource == Bastion::Field::"users.email")
when { principal.role == "moderator" };

@id("mods-birth-generalized")
@transform("generalize")
permit (principal, action, resource == Bastion::Field::"users.birth_date")
when { principal.role == "moderator" };
"""
    )
    plan = _engine(text).plan(PEOPLE["moderator"], PlanRequest(dataset="users"))
    assert plan.field("email").transform is Transform.MASK
    assert plan.field("email").policies == ("mods", "mods-email-masked")
    assert "least revealing transform wins" in plan.field("email").reason
    assert plan.field("birth_date").transform is Transform.GENERALIZE
    assert plan.field("phone").transform is Transform.CLEAR


def test_time_bound_policies_disable_the_plan_cache() -> None:
    text = PERMIT_MOD.replace(
        'principal.role == "moderator"',
        'principal.role == "moderator" && context.now < datetime("2026-01-01T00:00:10Z")',
    )
    clock = FixedClock()
    engine = PolicyEngine(compile_policies(text), default_catalog(), clock=clock)
    assert engine.policies.uses_now
    req = PlanRequest(dataset="videos", fields=("title",))
    assert engine.plan(PEOPLE["moderator"], req).decision == "allow"
    from datetime import timedelta

    clock.advance(timedelta(seconds=11))
    assert engine.plan(PEOPLE["moderator"], req).decision == "deny"


def test_an_erroring_forbid_fails_closed() -> None:
    # Cedar skips a policy whose evaluation errors; the engine must then deny, not allow.
    text = (
        PERMIT_MOD
        + """
@id("odd")
forbid (principal, action, resource is Bastion::Field)
when { principal.clearance_level + 9223372036854775807 > 0 };
"""
    )
    plan = _engine(text).plan(PEOPLE["moderator"], PlanRequest(dataset="users", fields=("email",)))
    assert plan.field("email").transform is Transform.DENY
    assert "evaluation error" in plan.field("email").reason


def test_default_pack_text_is_the_files_in_order() -> None:
    text = default_pack_text()
    assert text.index("covered-persons-denied-protected") < text.index("policy-admins")


def test_obligations_summarize_in_one_line() -> None:
    by_id = {p.id: p for p in default_policies().policies}
    assert by_id["sensitive-categories-need-two-approvers"].obligations == "approvers=2"
    assert by_id["covered-persons-denied-protected"].obligations == ""
    mods = compile_policies(PERMIT_MOD).policies[0]
    assert mods.obligations == "transform=clear"
