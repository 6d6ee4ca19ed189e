"""The ``bastion releases`` commands end to end on a real home (SQLite), with real witnesses."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from release_helpers import T0
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.demo.release_sample import Person, commit_files, init_sample_repo
from bastion.ledger.note import NoteVerifier
from conftest import RunningWitness

runner = CliRunner()


def run(*args: str, code: int = 0) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture
def home(tmp_path: Path, witness_servers: list[RunningWitness]) -> Path:
    home = tmp_path / "home"
    origin = f"cli.test.example/{uuid.uuid4().hex[:8]}"
    summary = run("init", "--home", str(home), "--origin", origin)
    verifier = NoteVerifier.from_vkey(summary["log_vkey"])
    for w in witness_servers:
        w.witness.logs[origin] = [verifier]
    entries = ", ".join(f'"{w.url} {w.witness.vkey}"' for w in witness_servers)
    cfg = home / "bastion.toml"
    text = re.sub(r"witnesses = \[\]", f"witnesses = [{entries}]", cfg.read_text())
    cfg.write_text(text.replace("witness_quorum = 0", "witness_quorum = 2"))
    return home


def test_cli_review_build_approve_verify(home: Path, tmp_path: Path) -> None:
    h = ("--home", str(home))
    keys = tmp_path / "keys"
    pubs = {
        n: run("releases", "keygen", str(keys / f"{n}.pem"))["public_key"]
        for n in ("alice", "bob", "dana", "builder")
    }
    run("releases", "keygen", str(keys / "alice.pem"), code=2)  # never overwrites a key
    run("releases", "repo-add", "socialapp", "--uri", "https://git.example/socialapp", *h)
    for n in ("alice", "bob", "dana"):
        run(
            "releases", "reviewer-add", f"{n}@example.com", "--key-file", str(keys / f"{n}.pem"), *h
        )
    run("releases", "reviewer-add", "x@example.com", "--public-key", "not-a-key", *h, code=2)
    policy = run(
        "releases", "builder-add", "https://ci.example/b", "--public-key", pubs["builder"], *h
    )
    assert policy["repositories"][0]["required_reviewers"] == 2 and len(policy["reviewers"]) == 3

    repo = tmp_path / "socialapp"
    dana = Person("Dana", "dana@example.com")
    init_sample_repo(repo, author=dana, when=T0)

    def review(*who: str, code: int = 0) -> dict[str, Any]:
        args = [
            "releases",
            "review",
            "--repo",
            str(repo),
            "--commit",
            "HEAD",
            "--scope",
            "all",
            "--notes",
            "ok",
            *h,
        ]
        for n in who:
            args += ["--reviewer-key", str(keys / f"{n}.pem"), "--reviewer", f"{n}@example.com"]
        return run(*args, code=code)

    refused = review("dana", "bob", code=6)
    assert not refused["ok"] and "review.author_is_reviewer" in refused["message"]
    assert "review.too_few_reviewers" in review("alice", code=6)["message"]
    assert review("alice", "bob")["reviewers"] == ["alice@example.com", "bob@example.com"]

    def build(out_dir: Path) -> dict[str, Any]:
        """Build HEAD of the sample repo with the registered builder key."""
        return run(
            "releases",
            "build",
            "--repo",
            str(repo),
            "--commit",
            "HEAD",
            "--command",
            "python3 build.py dist/app.tar.gz",
            "--output",
            "dist/app.tar.gz",
            "--builder-id",
            "https://ci.example/b",
            "--builder-key",
            str(keys / "builder.pem"),
            "--out-dir",
            str(out_dir),
            *h,
        )

    built = build(tmp_path / "out")
    artifact, prov = Path(built["artifact"]), Path(built["provenance"])
    assert run(
        "releases",
        "rebuild",
        "--provenance",
        str(prov),
        "--repo",
        str(repo),
        "--artifact",
        str(artifact),
        *h,
    )["reproducible"]

    approved = run(
        "releases",
        "approve",
        str(artifact),
        "--provenance",
        str(prov),
        "--app",
        "com.example.social",
        *h,
    )
    assert approved["checkpoint_size"] > approved["log_index"]
    ev, bundle = tmp_path / "evidence.json", tmp_path / "trust.json"
    run("releases", "evidence", str(artifact), "--app", "com.example.social", "--out", str(ev), *h)
    run("releases", "bundle", "--out", str(bundle), *h)

    state = tmp_path / "phone"
    verify = (
        "releases",
        "verify",
        "--bundle",
        str(bundle),
        "--evidence",
        str(ev),
        "--state",
        str(state),
    )
    ok = run(*verify, str(artifact), "--app", "com.example.social", "--channel", "stable")
    assert ok["ok"] and ok["checkpoint"]["size"] == approved["checkpoint_size"]
    assert len(ok["checkpoint"]["cosigners"]) >= 2

    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(artifact.read_bytes() + b"\0")
    target = ("--app", "com.example.social", "--channel", "stable")
    assert run(*verify, str(tampered), *target, code=6)["code"] == "artifact.digest_mismatch"
    # The update checker must name its app and channel.
    assert (
        runner.invoke(app, [*verify, str(artifact), "--app", "com.example.social"]).exit_code == 2
    )

    # An unreviewed commit builds, but the custodian will not approve it.
    commit_files(repo, {"app/x.txt": "x\n"}, author=dana, when=T0, message="x")
    built2 = build(tmp_path / "out2")
    refused2 = run(
        "releases",
        "approve",
        built2["artifact"],
        "--provenance",
        built2["provenance"],
        "--app",
        "com.example.social",
        *h,
        code=6,
    )
    assert "review.unreviewed_commit" in refused2["message"]

    # Bad inputs: unreadable evidence, expired bundle.
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert (
        run(
            "releases",
            "verify",
            str(artifact),
            "--bundle",
            str(bundle),
            "--evidence",
            str(junk),
            *target,
            code=2,
        )["error"]
        == "InputError"
    )
    doc = json.loads(bundle.read_text())
    doc["issued_at"], doc["expires_at"] = "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert (
        run(
            "releases",
            "verify",
            str(artifact),
            "--bundle",
            str(old),
            "--evidence",
            str(ev),
            *target,
            code=6,
        )["code"]
        == "bundle.expired"
    )


def test_cli_review_needs_matching_reviewer_and_key_counts(home: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    run("releases", "keygen", str(key))
    res = run(
        "releases",
        "review",
        "--repo",
        str(tmp_path),
        "--commit",
        "HEAD",
        "--scope",
        "s",
        "--reviewer-key",
        str(key),
        "--reviewer",
        "a@x",
        "--reviewer",
        "b@x",
        "--home",
        str(home),
        code=2,
    )
    assert "one --reviewer-key per --reviewer" in res["message"]
