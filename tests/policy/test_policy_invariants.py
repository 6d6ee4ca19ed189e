"""The invariant checker: the shipped pack proves every shipped invariant, and sets that break
one (the pack before the break-glass fix, fail-open classifications, a widened transform) are
refused with a counterexample that Cedar confirms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.clock import FixedClock
from bastion.errors import InputError
from bastion.events import Actor, PolicyChange
from bastion.ledger.log import Log
from bastion.policy import (
    PolicyRejected,
    PolicyStore,
    compile_policies,
    default_pack_text,
    default_policies,
)
from bastion.policy.invariants import (
    InvariantViolated,
    check_invariants,
    parse_invariants,
    shipped_invariants,
)
from bastion.policy.store import migrate_policy_store
from bastion.store import Database

from .conftest import recorded

OLD_PACK = Path(__file__).parent / "packs" / "before-break-glass-fix"
ADMIN = Actor(id="ada", kind="operator", role="policy_admin")
STAFF_ROLES = ["engineer", "support", "sre", "security", "investigator"]
runner = CliRunner()


def old_pack_text() -> str:
    return "\n".join(p.read_text() for p in sorted(OLD_PACK.glob("*.cedar")))


def broken(text: str, invariants: str | None = None) -> dict[str, dict[str, object]]:
    inv = parse_invariants(invariants) if invariants else None
    report = check_invariants(compile_policies(text), inv)
    return {r.invariant.id: r.counterexample.to_json() for r in report.broken if r.counterexample}


def test_the_shipped_pack_proves_every_shipped_invariant() -> None:
    report = check_invariants(default_policies())
    assert report.ok, [r.to_json() for r in report.broken]
    ids = {r.invariant.id for r in report.results}
    # The four the custodian declared, at least.
    assert {
        "no-protected-field-to-covered-persons",
        "break-glass-only-cleared-staff-with-mfa",
        "nothing-protected-without-mfa",
        "unknown-classification-denied",
    } <= ids
    assert report.table_rows > 1000  # the request space was really walked


def test_the_pack_before_the_break_glass_fix_is_refused_with_a_counterexample() -> None:
    found = broken(old_pack_text())
    cx = found["break-glass-only-cleared-staff-with-mfa"]
    principal = cx["principal"]
    assert isinstance(principal, dict)
    qualified = (
        principal["custodian"]
        and principal["role"] in STAFF_ROLES
        and int(principal["clearance_level"]) >= 2
        and principal["mfa"]
    )
    assert not qualified
    assert cx["context"]["break_glass"] is True  # type: ignore[index]
    assert cx["denied_with"]["break_glass"] is False  # type: ignore[index]
    # It also let every staff permit read a classification it never named.
    assert "unknown-classification-denied" in found


def test_the_exact_finding_clearance_internal_reads_location_through_break_glass() -> None:
    # The review's attack, pinned: an internal-clearance custodian engineer with MFA, in the
    # US, reading a precise-geolocation field. The old pack allows it with break-glass only.
    pinned = """
version: 1
invariants:
  - id: internal-clearance-cannot-break-glass-into-location
    description: the review's finding
    when:
      principal: {custodian: true, role: engineer, clearance: internal, mfa: true,
                  location_country: US}
      resource: {category: precise_geolocation}
      context: {break_glass: true}
    expect:
      only_if_allowed_with: {context: {break_glass: false}}
"""
    cx = broken(old_pack_text(), pinned)["internal-clearance-cannot-break-glass-into-location"]
    assert cx["principal"]["clearance"] == "internal"  # type: ignore[index]
    assert "staff-protected-with-purpose-and-ticket" in cx["allowed_by"]  # type: ignore[operator]
    assert broken(default_pack_text(), pinned) == {}


def test_a_fail_open_classification_rule_is_refused() -> None:
    # Finding 4: a permit written `classification != "protected"` reads any new class.
    fail_open = default_pack_text().replace(
        """  [
    Bastion::Classification::"interoperable",
    Bastion::Classification::"public"
  ].contains(resource.classification) &&
  context.purpose != \"\"""",
        '  resource.classification != Bastion::Classification::"protected" &&\n'
        '  context.purpose != ""',
        1,
    )
    fail_open = fail_open.replace(
        '@id("unknown-classification-denied")', '@id("unknown-classification-guard-removed")'
    ).replace(
        """unless {
  [
    Bastion::Classification::"protected",
    Bastion::Classification::"interoperable",
    Bastion::Classification::"public"
  ].contains(resource.classification)
};""",
        "when { false };",
    )
    assert fail_open != default_pack_text()
    cx = broken(fail_open)["unknown-classification-denied"]
    assert cx["resource"]["classification"] not in ("protected", "interoperable", "public")  # type: ignore[index]
    # Any permit that does not itself test the classification lets the unknown class through.
    assert cx["allowed_by"] and set(cx["allowed_by"]) <= {
        "staff-non-protected-with-purpose",
        "subjects-rectify-own-profile",
        "profile-service-writes-users",
        "content-service-writes-videos",
        "events-service-writes-events",
    }


def test_a_covered_person_given_pseudonyms_is_refused() -> None:
    without_guard = default_pack_text().replace(
        "principal.covered_person &&\n  (resource.pseudonymize ||",
        "false &&\n  (resource.pseudonymize ||",
    )
    assert without_guard != default_pack_text()
    cx = broken(without_guard)["no-linkable-identifier-to-covered-persons"]
    assert cx["principal"]["covered_person"] is True  # type: ignore[index]
    # Only a permit that can match a covered person (abroad, or the parent as a flow's
    # recipient) can be what lets one through once the guard is gone.
    assert len(cx["allowed_by"]) == 1  # type: ignore[arg-type]
    assert cx["allowed_by"][0] in {  # type: ignore[index]
        "engineers-abroad-interoperable-pseudonymized",
        "parent-receives-video-statistics",
        "parent-receives-engagement-dimensions",
    }


def test_at_most_catches_a_widened_transform() -> None:
    rule = """
version: 1
invariants:
  - id: moderators-see-identifiers-at-most-masked
    description: moderators never see an identifier more than masked
    when:
      principal: {role: moderator}
      resource: {category: covered_personal_identifiers}
    expect: {at_most: mask}
"""
    assert broken(default_pack_text(), rule) == {}
    widened = default_pack_text().replace(
        '@transform("mask")\npermit', '@transform("clear")\npermit', 1
    )
    cx = broken(widened, rule)["moderators-see-identifiers-at-most-masked"]
    assert cx["allowed_by"] == ["moderators-identifiers-masked"]


def test_a_permit_matching_on_break_glass_flag_alone_is_caught() -> None:
    # A planted bug in the new shape: a read permit that trusts context.break_glass.
    planted = (
        default_pack_text()
        + """
@id("planted-read-on-flag")
@transform("clear")
permit (principal, action == Bastion::Action::"read", resource is Bastion::Field)
when { context.break_glass };
"""
    )
    found = broken(planted)
    assert found["break-glass-only-cleared-staff-with-mfa"]["allowed_by"] == [
        "planted-read-on-flag"
    ]


def test_store_refuses_a_set_that_breaks_an_invariant(
    db: Database, ledger: Log, clock: FixedClock
) -> None:
    migrate_policy_store(db)
    store = PolicyStore(db, ledger, clock)
    first = store.load(default_pack_text(), ADMIN, "initial")
    size = ledger.size()
    with pytest.raises(InvariantViolated) as err:
        store.load(old_pack_text(), ADMIN, "roll back to the old pack")
    assert "break-glass-only-cleared-staff-with-mfa" in str(err.value)
    assert err.value.report.broken
    # Nothing changed: the set in force stays, and nothing was recorded as loaded.
    active = store.active()
    assert active is not None and active.version == first.version
    assert ledger.size() == size
    assert not [e for e in recorded(ledger)[size:] if isinstance(e, PolicyChange)]


def test_store_with_custom_invariants(db: Database, ledger: Log, clock: FixedClock) -> None:
    migrate_policy_store(db)
    strict = parse_invariants(
        """
version: 1
invariants:
  - id: no-export-at-all
    description: nothing is exported, whatever the grant
    when: {action: [export]}
    expect: deny
"""
    )
    store = PolicyStore(db, ledger, clock, invariants=strict)
    with pytest.raises(InvariantViolated) as err:
        store.load(default_pack_text(), ADMIN, "initial")
    cx = err.value.report.broken[0].counterexample
    assert cx is not None and cx.action == "export"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\ninvariants: []\n", "invariants"),
        (
            "version: 1\ninvariants:\n  - id: x\n    description: d\n    when:\n"
            "      principal: {rank: 3}\n    expect: deny\n",
            "invariant 'x'",
        ),
        (
            "version: 1\ninvariants:\n  - id: x\n    description: d\n    when:\n"
            "      action: [destroy]\n    expect: deny\n",
            "invariant 'x'",
        ),
        ("version: 1\ninvariants:\n  - id: x\n    description: d\n", "invariant 'x'"),
        ("version: [1\n", None),
    ],
)
def test_bad_invariant_files_name_what_and_where(text: str, where: str | None) -> None:
    with pytest.raises(InputError) as err:
        parse_invariants(text, source="inv.yaml")
    assert err.value.file == "inv.yaml"
    if where is not None:
        assert where in (err.value.field or "")


def test_shipped_invariants_parse() -> None:
    assert len(shipped_invariants().invariants) >= 4


def test_policy_check_cli(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["policy", "check", "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["ok"] is True and all(i["holds"] for i in doc["invariants"])
    bad = runner.invoke(app, ["policy", "check", str(OLD_PACK), "--json"])
    assert bad.exit_code == 1
    doc = json.loads(bad.output)
    failed = {i["id"]: i for i in doc["invariants"] if not i["holds"]}
    assert failed["break-glass-only-cleared-staff-with-mfa"]["counterexample"]["principal"]
    human = runner.invoke(app, ["policy", "check", str(OLD_PACK)])
    assert human.exit_code == 1 and "counterexample" in human.output


def test_policy_load_cli_refuses_with_the_counterexample(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert runner.invoke(app, ["init", "--home", str(home), "--json"]).exit_code == 0
    out = runner.invoke(
        app,
        ["policy", "load", str(OLD_PACK), "--reason", "old pack", "--home", str(home), "--json"],
    )
    assert out.exit_code == 2, out.output
    doc = json.loads(out.output)
    assert doc["error"] == "InvariantViolated"
    ids = {i["id"] for i in doc["detail"]["invariants"]}
    assert "break-glass-only-cleared-staff-with-mfa" in ids


def test_a_set_the_checker_cannot_enumerate_is_refused() -> None:
    by_name = (
        default_pack_text()
        + """
@id("alice-only")
@transform("clear")
permit (
  principal == Bastion::Principal::"alice",
  action == Bastion::Action::"read",
  resource is Bastion::Field
);
"""
    )
    compiled = compile_policies(by_name)
    from bastion.policy.invariants import enforce_invariants

    with pytest.raises(PolicyRejected) as err:
        enforce_invariants(compiled)
    assert "cannot be checked" in str(err.value)
