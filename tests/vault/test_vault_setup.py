"""Opening a home's vault: "not initialized" only when it is; an outage says the database is
unreachable (never "run bastion init"), through the API and the CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.clock import FixedClock
from bastion.errors import NotInitialized, StoreUnavailable
from bastion.home import Home
from bastion.store import Database, open_database
from bastion.vault import open_vault


def _dead_port() -> int:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    root.mkdir(exist_ok=True)
    (root / "bastion.toml").write_text("")
    return Home.load(root)


def _assert_unreachable(exc: pytest.ExceptionInfo[StoreUnavailable]) -> None:
    message = str(exc.value)
    assert "database is unreachable" in message
    assert "not initialized" not in message and "bastion init" not in message


def test_postgresql_where_nothing_listens_is_unreachable(tmp_path: Path, clock: FixedClock) -> None:
    db = open_database(f"postgresql://postgres:secret@127.0.0.1:{_dead_port()}/test")
    try:
        with pytest.raises(StoreUnavailable) as exc:
            open_vault(_home(tmp_path), db, clock)
    finally:
        db.close()
    _assert_unreachable(exc)
    assert "secret" not in str(exc.value)


@pytest.mark.parametrize("kind", ["directory", "not-a-database"])
def test_unreadable_sqlite_path_is_unreachable(
    tmp_path: Path, clock: FixedClock, kind: str
) -> None:
    path = tmp_path / "bastion.db"
    if kind == "directory":
        path.mkdir()  # SQLite cannot open it, whoever runs the test (root too)
    else:
        path.write_bytes(b"this is no SQLite file " * 200)
    db = open_database(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreUnavailable) as exc:
            open_vault(_home(tmp_path), db, clock)
    finally:
        db.close()
    _assert_unreachable(exc)


def test_reachable_database_without_the_vault_is_not_initialized(
    tmp_path: Path, db: Database, clock: FixedClock
) -> None:
    with pytest.raises(NotInitialized, match=r"not initialized.*bastion init"):
        open_vault(_home(tmp_path), db, clock)
    db.migrate("unrelated", ["CREATE TABLE IF NOT EXISTS vault_secrets (name TEXT, v TEXT)"])
    with pytest.raises(NotInitialized, match=r"not initialized.*bastion init"):
        open_vault(_home(tmp_path), db, clock)  # the table, but no identity secret


def test_cli_on_a_database_outage_says_unreachable(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"BASTION_HOME": str(tmp_path / "home")}
    assert runner.invoke(app, ["init", "--json"], env=env).exit_code == 0
    env["BASTION_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{_dead_port()}/test"
    result = runner.invoke(app, ["vault", "stats", "--json"], env=env)
    out = json.loads(result.stdout)
    assert result.exit_code == StoreUnavailable.exit_code, result.output
    assert out["error"] == "StoreUnavailable" and "database is unreachable" in out["message"]
    assert "bastion init" not in out["message"]
