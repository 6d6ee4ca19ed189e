"""``bastion policy load/show`` and ``bastion access`` on an initialized home (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.clock import SystemClock
from bastion.home import ENV_FREE_TEXT, Home
from bastion.policy import default_pack_text, text_commitment, text_key
from bastion.store import open_database
from bastion.vault import open_vault

runner = CliRunner()


def person(id: str, role: str, **kw: object) -> str:
    base: dict[str, object] = {
        "id": id,
        "role": role,
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "restricted",
        "amr": ["pwd", "mfa"],
    }
    base.update(kw)
    return json.dumps(base)


ALICE = person("alice", "engineer")
SAM = person("sam", "security_officer")
PAT = person("pat", "privacy_officer")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    out = runner.invoke(app, ["init", "--home", str(h), "--json"])
    assert out.exit_code == 0, out.output
    return h


def run(home: Path, *args: str) -> dict[str, object]:
    out = runner.invoke(app, [*args, "--home", str(home), "--json"])
    doc = json.loads(out.output)
    doc["_exit"] = out.exit_code
    return doc


@pytest.fixture
def bare_home(tmp_path: Path) -> Path:
    h = tmp_path / "bare"
    out = runner.invoke(app, ["init", "--home", str(h), "--no-policy-pack", "--json"])
    assert out.exit_code == 0, out.output
    return h


def test_init_installs_the_pack_on_the_record(home: Path) -> None:
    shown = run(home, "policy", "show", "--history")
    assert shown["version"] == 1 and shown["actor"] == "bastion"
    entry = run(home, "ledger", "entry", "0")
    assert entry["entry"]["type"] == "policy.change"  # type: ignore[index]
    assert entry["entry"]["policy_sha256"] == shown["sha256"]  # type: ignore[index]


def test_load_show_and_refuse(bare_home: Path, tmp_path: Path) -> None:
    home = bare_home
    pack = tmp_path / "pack.cedar"
    pack.write_text(default_pack_text())
    loaded = run(home, "policy", "load", str(pack), "--reason", "initial pack", "--actor", "ada")
    assert loaded["_exit"] == 0 and loaded["changed"] is True and loaded["version"] == 1
    bad = tmp_path / "bad.cedar"
    bad.write_text(default_pack_text().replace("principal.mfa", "principal.mfa_done"))
    refused = run(home, "policy", "load", str(bad), "--reason", "typo")
    assert refused["_exit"] == 2 and "mfa_done" in str(refused["message"])
    shown = run(home, "policy", "show", "--history")
    assert shown["version"] == 1 and shown["actor"] == "ada"
    assert len(shown["history"]) == 1  # type: ignore[arg-type]
    explained = run(
        home,
        "policy",
        "explain",
        "--principal-json",
        person("mo", "moderator"),
        "--dataset",
        "users",
        "--fields",
        "email",
    )
    assert explained["plan"]["fields"][0]["transform"] == "mask"  # type: ignore[index]


@pytest.mark.parametrize("free_text", ["commit", "publish"])
def test_load_reason_reaches_the_log_as_the_home_says(
    home: Path, tmp_path: Path, free_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The typed ``--reason`` names a person: a keyed commitment in the log by default (the
    text kept in the database), verbatim with free_text = publish."""
    monkeypatch.setenv(ENV_FREE_TEXT, free_text)
    why = "stricter exports after jane.doe@example.com's complaint"
    pack = tmp_path / "pack.cedar"
    pack.write_text(default_pack_text() + "\n// stricter\n")
    loaded = run(home, "policy", "load", str(pack), "--reason", why, "--actor", "ada")
    assert loaded["_exit"] == 0 and loaded["changed"] is True
    entry = run(home, "ledger", "entry", str(loaded["ledger_index"]))
    assert entry["entry"]["type"] == "policy.change"  # type: ignore[index]
    published = str(entry["entry"]["reason"])  # type: ignore[index]
    assert run(home, "policy", "show")["reason"] == why  # the version row keeps the text
    if free_text == "publish":
        assert published == why
        return
    assert "jane.doe" not in json.dumps(entry)
    h = Home.load(home)
    db = open_database(h.database_url)
    vault = open_vault(h, db, SystemClock())
    try:
        assert published == text_commitment(text_key(vault.subject_hash), why)
        stored = db.query("SELECT text FROM free_texts WHERE commitment = ?", (published,))
        assert stored == [(why,)]
    finally:
        vault.close()
        db.close()


def test_access_workflow(home: Path, tmp_path: Path) -> None:
    pack = tmp_path / "pack.cedar"
    pack.write_text(default_pack_text())
    assert run(home, "policy", "load", str(pack), "--reason", "initial")["_exit"] == 0
    req = run(
        home,
        "access",
        "request",
        "--as",
        ALICE,
        "--dataset",
        "users",
        "--fields",
        "email,location",
        "--subject",
        "u1",
        "--justification",
        "customer_initiated_support",
        "--detail",
        "User reported the phone stolen",
        "--ticket",
        "SUP-9",
        "--purpose",
        "recovery",
        "--duration",
        "2h",
    )
    assert req["_exit"] == 0, req
    rid = req["request"]["request_id"]  # type: ignore[index]
    assert req["request"]["approvers_required"] == 2  # type: ignore[index]
    selfie = run(home, "access", "approve", rid, "--as", ALICE, "--reason", "me")  # type: ignore[arg-type]
    assert selfie["_exit"] == 2 and "self-approval" in str(selfie["message"])
    assert run(home, "access", "approve", rid, "--as", SAM, "--reason", "ok")["grant"] is None  # type: ignore[arg-type]
    granted = run(home, "access", "approve", rid, "--as", PAT, "--reason", "ok")  # type: ignore[arg-type]
    grant = granted["grant"]
    assert grant and grant["token"].startswith("bgrant1.")  # type: ignore[index]
    revoked = run(home, "access", "revoke", grant["grant_id"], "--as", SAM, "--reason", "done")  # type: ignore[index]
    assert revoked["step"] == "revoked"
    listed = run(home, "access", "list")
    assert [r["status"] for r in listed["requests"]] == ["granted"]  # type: ignore[union-attr]

    bg = run(
        home,
        "access",
        "break-glass",
        "--as",
        ALICE,
        "--dataset",
        "users",
        "--fields",
        "location",
        "--subject",
        "u1",
        "--detail",
        "Police welfare check, imminent danger",
    )
    assert bg["_exit"] == 0 and bg["step"] == "break-glass" and bg["review_id"]
    reviews = run(home, "access", "list", "--reviews")
    assert reviews["reviews"][0]["status"] == "pending"  # type: ignore[index]
    review = (home, "access", "review", str(bg["review_id"]), "--as", SAM)
    done = run(*review, "--outcome", "justified", "--notes", "police request on file")
    assert done["step"] == "reviewed"
    assert run(*review, "--outcome", "maybe", "--notes", "x")["_exit"] == 2


def test_access_without_a_loaded_policy_fails_closed(bare_home: Path) -> None:
    out = run(
        bare_home,
        "access",
        "request",
        "--as",
        ALICE,
        "--dataset",
        "users",
        "--justification",
        "service_operation",
        "--detail",
        "routine maintenance work",
    )
    assert out["_exit"] == 3 and "no policy is loaded" in str(out["message"])
