"""``bastion policy`` commands that need no home: validate, schema, explain."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.policy import default_pack_text

runner = CliRunner()

MODERATOR = json.dumps(
    {
        "id": "mo",
        "role": "moderator",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "amr": ["pwd", "mfa"],
    }
)
COVERED = json.dumps(
    {
        "id": "wei",
        "role": "engineer",
        "employer": "parentco",
        "employer_country": "CN",
        "location_country": "CN",
        "amr": ["mfa"],
    }
)


def explain(principal: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """``bastion policy explain --pack`` on the users dataset as `principal` (JSON or @file)."""
    command = ["policy", "explain", "--pack", "--principal-json", principal, "--dataset", "users"]
    return runner.invoke(app, [*command, *args], env=env)


def test_validate_accepts_the_pack(tmp_path: Path) -> None:
    f = tmp_path / "pack.cedar"
    f.write_text(default_pack_text())
    out = runner.invoke(app, ["policy", "validate", str(f), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["ok"] and any(p["id"] == "moderators-identifiers-masked" for p in doc["policies"])


def test_validate_refuses_an_unknown_attribute_with_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.cedar"
    f.write_text(
        '@id("x") @transform("clear")\n'
        "permit (principal, action, resource is Bastion::Field)\n"
        'when { principal.nationality == "US" };\n'
    )
    out = runner.invoke(app, ["policy", "validate", str(f), "--json"])
    assert out.exit_code == 2
    doc = json.loads(out.output)
    assert doc["ok"] is False and doc["error"] == "PolicyRejected"
    assert "nationality" in doc["message"] and str(f) in doc["message"]
    missing = runner.invoke(app, ["policy", "validate", str(tmp_path / "none.cedar")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_schema_is_printed() -> None:
    out = runner.invoke(app, ["policy", "schema", "--json"])
    assert out.exit_code == 0 and "entity Principal" in json.loads(out.output)["schema"]


def test_explain_json_shows_deciding_policies_and_transforms() -> None:
    out = explain(MODERATOR, "--fields", "email,location,language", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    fields = {f["field"]: f for f in doc["plan"]["fields"]}
    assert fields["email"]["transform"] == "mask"
    assert fields["email"]["policies"] == ["moderators-identifiers-masked"]
    assert fields["location"]["transform"] == "deny"
    assert fields["language"]["transform"] == "clear"
    ids = {p["id"] for p in doc["policies"]}
    assert {"moderators-identifiers-masked", "sensitive-categories-need-two-approvers"} <= ids
    assert doc["principal"]["covered_person"] is False


def test_explain_table_for_a_covered_person(tmp_path: Path) -> None:
    f = tmp_path / "wei.json"
    f.write_text(COVERED)
    out = explain(f"@{f}", "--purpose", "debug", "--ticket", "T-1", env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "covered person" in out.output and "country of concern" in out.output
    assert "covered-persons-denied-protected" in out.output
    assert "pseudonym" in out.output  # user_id for an engineer abroad


def test_explain_bad_input_is_reported() -> None:
    bad_json = explain("{nope")
    assert bad_json.exit_code == 2 and "not JSON" in bad_json.output
    bad_country = explain(
        json.dumps({"id": "x", "role": "engineer", "location_country": "USA"}), "--json"
    )
    assert bad_country.exit_code == 2
    assert (
        json.loads(bad_country.output)["message"].endswith(
            "must be an ISO 3166-1 alpha-2 country code"
        )
        or "location_country" in bad_country.output
    )
    unknown = explain(MODERATOR, "--fields", "ssn", "--json")
    assert unknown.exit_code == 2 and "'ssn'" in json.loads(unknown.output)["message"]
