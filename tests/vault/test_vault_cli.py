"""The vault's CLI end to end: init, ingest, stats, shred, keys; --json; uninitialized homes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vault_rows as R
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.store import open_database

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
runner = CliRunner()


@pytest.fixture
def home_env(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """Environment for a fresh home on the chosen backend (PostgreSQL in its own schema)."""
    env = {"BASTION_HOME": str(tmp_path / "home"), "BASTION_ACTOR": "ops-alice"}
    schema = None
    if backend == "postgresql":
        request.getfixturevalue("db")  # fails (or skips outside CI) like every PG test
        schema = f"t_{uuid.uuid4().hex[:12]}"
        open_database(PG_URL, schema=schema).close()
        env["BASTION_DATABASE_URL"] = f"{PG_URL}?options=-csearch_path%3D{schema}"
    yield env
    if schema:
        d = open_database(PG_URL, schema=schema)
        d.drop_schema()  # type: ignore[attr-defined]
        d.close()


def run(env: dict[str, str], *args: str) -> tuple[int, Any]:
    result = runner.invoke(app, [*args], env=env)
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.stdout + result.stderr


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_uninitialized_home_says_so(tmp_path: Path) -> None:
    env = {"BASTION_HOME": str(tmp_path / "never")}
    for args in (
        ["vault", "stats", "--json"],
        ["vault", "shred", "u1", "--json"],
        ["keys", "list", "--json"],
        ["keys", "rotate", "--json"],
        ["keys", "retire", "1", "--json"],
        ["ingest", "users", "x.csv", "--json"],
    ):
        code, out = run(env, *args)
        assert code == 3, args
        assert out["error"] == "NotInitialized" and "bastion init" in out["message"]
    result = runner.invoke(app, ["vault", "stats"], env=env)
    assert result.exit_code == 3 and "not an initialized Bastion home" in result.stderr


def test_cli_lifecycle(home_env: dict[str, str], tmp_path: Path) -> None:
    code, out = run(home_env, "init", "--json")
    assert code == 0 and out["kek_version"] == 1
    users = _jsonl(tmp_path / "users.jsonl", [R.user(i) for i in range(6)])
    events = _jsonl(tmp_path / "events.jsonl", [R.event(i, i % 6) for i in range(30)])
    code, out = run(home_env, "ingest", "users", str(users), "--json")
    assert code == 0 and out["rows"] == 6 and out["sealed_values"] == 66
    code, out = run(home_env, "ingest", "events", str(events), "--json", "--batch-size", "7")
    assert code == 0 and out["rows"] == 30 and out["new_subjects"] == 0
    code, out = run(home_env, "vault", "stats", "--json")
    assert out["records"] == {"users": 6, "videos": 0, "events": 30}
    assert out["values_by_classification"]["public"] == 6 * 2 + 30 * 4
    code, out = run(home_env, "vault", "shred", "u00002", "--reason", "GDPR request", "--json")
    assert code == 0
    receipt = out["receipt"]
    assert receipt["type"] == "deletion.receipt" and receipt["records_affected"] == 6
    assert receipt["actor"]["id"] == "ops-alice" and "u00002" not in json.dumps(receipt)
    code, out = run(home_env, "vault", "shred", "u00002", "--json")
    assert code == 2 and "no such subject" in out["message"]
    code, out = run(home_env, "keys", "rotate", "--json")
    assert code == 0 and out["event"]["new_version"] == 2 and out["event"]["rewrapped"] == 6
    code, out = run(home_env, "keys", "retire", "2", "--json")
    assert code == 2 and "current" in out["message"]
    code, out = run(home_env, "keys", "retire", "1", "--json")
    assert code == 0 and out["event"]["retired"] == [1]
    code, out = run(home_env, "keys", "list", "--json")
    assert out["versions"] == [
        {"version": 1, "state": "retired", "data_keys": 0},
        {"version": 2, "state": "current", "data_keys": 5},
    ]
    code, out = run(home_env, "vault", "purge", "--json")
    assert code == 0 and out["purged"] == 6
    result = runner.invoke(app, ["vault", "stats"], env=home_env)
    assert result.exit_code == 0 and "Values by classification" in result.stdout


def test_cli_ingest_errors(home_env: dict[str, str], tmp_path: Path) -> None:
    run(home_env, "init", "--json")
    rows = [R.user(i) for i in range(5)]
    rows[3]["email"] = 12345
    bad = _jsonl(tmp_path / "users.jsonl", rows)
    code, out = run(home_env, "ingest", "users", str(bad), "--json")
    assert code == 2
    assert out["message"].startswith(f"file {bad}, row 4, dataset 'users', field 'email'")
    code, out = run(home_env, "ingest", "planets", str(bad), "--json")
    assert code == 2 and "unknown dataset" in out["message"]
    code, out = run(home_env, "vault", "stats", "--json")
    assert out["records"]["users"] == 0 and out["subjects"] == 0
    result = runner.invoke(app, ["ingest", "users", str(bad)], env=home_env)
    assert result.exit_code == 2 and "field 'email'" in result.stderr


def test_cli_with_an_unreachable_hsm_fails_closed(tmp_path: Path) -> None:
    env = {
        "BASTION_HOME": str(tmp_path / "home"),
        "BASTION_KEY_PROVIDER": "pkcs11",
        "BASTION_PKCS11_LIB": str(tmp_path / "missing-libsofthsm2.so"),
        "BASTION_PKCS11_PIN": "1234",
    }
    code, out = run(env, "init", "--json")
    assert code == 5 and out["error"] == "KeyUnavailable"
    code, out = run(env, "vault", "stats", "--json")
    assert code == 3  # the vault was never initialized: said plainly, nothing opened


def test_operator_actions_are_recorded_in_the_ledger(
    home_env: dict[str, str], tmp_path: Path
) -> None:
    """Ingest, shred, rotate and retire each leave an entry, in order, after the policy pack."""
    assert run(home_env, "init", "--json")[0] == 0
    users = _jsonl(tmp_path / "users.jsonl", [R.user(i) for i in range(3)])
    code, out = run(home_env, "ingest", "users", str(users), "--json")
    assert code == 0
    indexes = [out["ledger"]["index"]]
    code, out = run(home_env, "vault", "shred", "u00001", "--json")
    indexes.append(out["ledger"]["index"])
    code, out = run(home_env, "keys", "rotate", "--json")
    indexes.append(out["ledger"]["index"])
    code, out = run(home_env, "keys", "retire", "1", "--json")
    indexes.append(out["ledger"]["index"])
    assert indexes == sorted(indexes) and len(set(indexes)) == 4
    types = []
    for index in indexes:
        code, out = run(home_env, "ledger", "entry", str(index), "--json")
        assert code == 0, out
        types.append(out["entry"]["type"])
    assert types == ["data.ingest", "deletion.receipt", "key.rotation", "key.rotation"]
    code, out = run(home_env, "ledger", "status", "--json")
    assert out["checkpoint"]["size"] == indexes[-1] + 1  # published, not just committed
