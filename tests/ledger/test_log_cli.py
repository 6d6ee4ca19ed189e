"""``bastion ledger`` and ``bastion witness`` commands on a real home (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.home_cmd import init_home
from bastion.cli.main import app
from bastion.ledger.checkpoint import open_checkpoint
from bastion.ledger.cosignature import CosignatureVerifier
from bastion.ledger.note import NoteVerifier

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    init_home(path, origin="cli.test/log")
    return path


def run(home: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--home", str(home)], input=stdin)
    return result.exit_code, result.stdout


def run_json(home: Path, *args: str, stdin: str | None = None) -> dict[str, object]:
    code, out = run(home, *args, "--json", stdin=stdin)
    assert code == 0, out
    parsed: dict[str, object] = json.loads(out)
    return parsed


LINES = "\n".join(
    [
        json.dumps({"reason": "wipe certificate", "subject": "rack 12 disks", "detail": {"n": 3}}),
        "",
        json.dumps(
            {
                "type": "key.rotation",
                "actor": {"id": "kms-operator", "kind": "operator"},
                "reason": "scheduled",
                "at": "2026-01-01T00:00:00.000000Z",
                "provider": "local",
                "old_version": 1,
                "new_version": 2,
                "rewrapped": 10,
            }
        ),
    ]
)


def status_size(home: Path) -> int:
    size = run_json(home, "ledger", "status")["tree_size"]
    assert isinstance(size, int)
    return size


def test_append_from_stdin_then_checkpoint_vkey_proof(home: Path, tmp_path: Path) -> None:
    out = run_json(home, "ledger", "append", "--actor", "dc-ops", stdin=LINES)
    receipts = out["receipts"]
    assert isinstance(receipts, list)
    assert [(r["line"], r["index"]) for r in receipts] == [(1, 0), (3, 1)]
    assert out["checkpoint_size"] == 2

    code, vkey = run(home, "ledger", "vkey")
    assert code == 0
    verifier = NoteVerifier.from_vkey(vkey.strip())
    assert verifier.name == "cli.test/log"

    code, note = run(home, "ledger", "checkpoint")
    assert code == 0
    assert open_checkpoint(note, verifier).size == 2

    shown = run_json(home, "ledger", "entry", "1")
    assert shown["entry"]["type"] == "key.rotation"  # type: ignore[index]
    entry_file = tmp_path / "entry0.json"
    assert run(home, "ledger", "entry", "0", "--out", str(entry_file))[0] == 0
    logged = json.loads(entry_file.read_text())
    assert logged["type"] == "operator.note"
    assert logged["actor"] == {"id": "dc-ops", "kind": "operator"}

    proof_file = tmp_path / "proof0.txt"
    proof = run_json(home, "ledger", "proof", "0", "--out", str(proof_file))
    assert proof["tree_size"] == 2
    assert proof_file.read_text().startswith("c2sp.org/tlog-proof@v1\n")
    code, bundle = run(home, "ledger", "proof", "1", "--bundle")
    assert code == 0 and bundle.startswith("c2sp.org/tlog-proof@v1\nindex 1\n")

    # The auditor's command checks the bundle with the vkey alone.
    verified = runner.invoke(
        app,
        [
            "ledger",
            "verify-proof",
            str(proof_file),
            "--entry",
            str(entry_file),
            "--vkey",
            vkey.strip(),
            "--json",
        ],
    )
    assert verified.exit_code == 0, verified.stdout
    assert json.loads(verified.stdout)["index"] == 0

    status = run_json(home, "ledger", "status", "--verify")
    assert status["tree_size"] == 2
    assert status["storage"]["entries_checked"] == 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("bad_line", "expect"),
    [
        ("{not json", "row 2"),
        ("[1, 2]", "row 2"),
        (json.dumps({"reason": "x", "subject": "y", "colour": "red"}), "row 2, field 'colour'"),
        (json.dumps({"type": "no.such.event", "reason": "x"}), "row 2"),
        (json.dumps({"reason": "x"}), "row 2, field 'subject'"),
        (json.dumps({"reason": "x", "subject": "y", "detail": {"b": "z" * 70000}}), "row 2"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_appended(
    home: Path, bad_line: str, expect: str
) -> None:
    good = json.dumps({"reason": "ok", "subject": "fine"})
    code, out = run(home, "ledger", "append", "--json", stdin=f"{good}\n{bad_line}\n{good}\n")
    assert code == 2, out
    body = json.loads(out)
    assert body["ok"] is False and body["error"] == "InputError"
    assert expect in body["message"]
    assert "<stdin>" in body["message"]
    assert status_size(home) == 0


def test_empty_input_is_an_error(home: Path) -> None:
    code, out = run(home, "ledger", "append", "--json", stdin="\n\n")
    assert code == 2
    assert "empty" in json.loads(out)["message"]


def test_proof_of_a_missing_index_fails(home: Path) -> None:
    run_json(home, "ledger", "append", stdin=json.dumps({"reason": "r", "subject": "s"}))
    code, out = run(home, "ledger", "proof", "5", "--json")
    assert code != 0
    assert json.loads(out)["ok"] is False


def test_commands_need_an_initialized_home(tmp_path: Path) -> None:
    code, out = run(tmp_path / "nowhere", "ledger", "status", "--json")
    assert code == 3
    assert "not an initialized Bastion home" in json.loads(out)["message"]


def test_witness_init_and_vkey(tmp_path: Path) -> None:
    wdir = tmp_path / "w"
    init = runner.invoke(
        app, ["witness", "init", "--dir", str(wdir), "--name", "audit.example/w1", "--json"]
    )
    assert init.exit_code == 0, init.stdout
    vkey = json.loads(init.stdout)["vkey"]
    assert CosignatureVerifier.from_vkey(vkey).name == "audit.example/w1"
    again = runner.invoke(app, ["witness", "vkey", "--dir", str(wdir)])
    assert again.stdout.strip() == vkey
    clash = runner.invoke(
        app, ["witness", "init", "--dir", str(wdir), "--name", "other.example/w", "--json"]
    )
    assert clash.exit_code == 2
    bad = runner.invoke(app, ["witness", "init", "--dir", str(wdir), "--name", "a b", "--json"])
    assert bad.exit_code == 2
