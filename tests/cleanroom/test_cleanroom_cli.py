"""bastion cleanroom: a home with the real log, budgets, queries, charts, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.clock import SystemClock
from bastion.events import AnalyticsBudgetChange, AnalyticsQuery, decode_event
from bastion.home import Home
from bastion.ledger.log import open_log
from bastion.store import open_database

runner = CliRunner()


def cli(home: Path, *args: str) -> Any:
    return runner.invoke(app, list(args), env={"BASTION_HOME": str(home)})


@pytest.fixture(scope="module")
def snapshot_home(tmp_path_factory: pytest.TempPathFactory, platform_dir: Path) -> Path:
    """A home whose vault holds the platform's events, and the snapshot built from it."""
    h = tmp_path_factory.mktemp("cleanroom-cli") / "home"
    res = cli(h, "init", "--json")
    assert res.exit_code == 0, res.output
    res = cli(h, "ingest", "events", str(platform_dir / "events.parquet"), "--json")
    assert res.exit_code == 0, res.output
    res = cli(h, "cleanroom", "snapshot", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["mode"] == "full" and out["records"] == out["opened"] == 40_000
    return h


@pytest.fixture
def home(tmp_path: Path, snapshot_home: Path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(snapshot_home, h)
    return h


def _ledger_events(home: Path) -> list[object]:
    h = Home.load(home)
    db = open_database(h.database_url)
    log = open_log(h, db, SystemClock(), background=False)
    try:
        return [decode_event(log.entry(i)) for i in range(log.size())]
    finally:
        log.close()
        db.close()


def test_budget_query_refusal_and_ledger(home: Path, tmp_path: Path) -> None:
    res = cli(home, "cleanroom", "budget", "set", "analyst", "ana", "--epsilon", "1.5")
    assert res.exit_code != 0, "a reason is required"
    for scope, who, eps in (("analyst", "ana", "1.5"), ("organization", "acme", "10")):
        res = cli(
            home, "cleanroom", "budget", "set", scope, who, "--epsilon", eps,
            "--delta", "1e-6", "--reason", "contract 42", "--actor", "dpo", "--json",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    chart = tmp_path / "ctr.png"
    res = cli(
        home, "cleanroom", "query", "ctr", "-e", "1", "-g", "campaign_id", "--max-groups", "3",
        "--analyst", "ana", "--org", "acme", "--chart", str(chart), "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["template"] == "ctr" and out["delta_spent"] == pytest.approx(1e-7)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in out["rows"]:
        assert set(row) == {"group", "statistic", "value", "noise_scale", "ci"}
    receipt = out["receipt"]["index"]

    res = cli(
        home, "cleanroom", "query", "distinct_users", "-e", "1", "-g", "age_band,region",
        "--analyst", "ana", "--org", "acme",
    )  # fmt: skip
    assert res.exit_code == 8
    assert "query refused" in res.output

    res = cli(home, "cleanroom", "budget", "--analyst", "ana", "--json")
    (budget,) = json.loads(res.stdout)["budgets"]
    assert budget["epsilon_spent"] == pytest.approx(1.0) and budget["queries"] == 1

    events = _ledger_events(home)
    queries = [e for e in events if isinstance(e, AnalyticsQuery)]
    assert [q.outcome for q in queries] == ["released", "refused"]
    assert queries[0].keys_released == out["keys_released"]
    assert isinstance(events[receipt], AnalyticsQuery)
    changes = [e for e in events if isinstance(e, AnalyticsBudgetChange)]
    assert [(c.principal, c.actor.id, c.reason) for c in changes] == [
        ("ana", "dpo", "contract 42"),
        ("acme", "dpo", "contract 42"),
    ]


def test_table_output_and_bad_input(home: Path) -> None:
    for scope, who in (("analyst", "ana"), ("organization", "acme")):
        cli(home, "cleanroom", "budget", "set", scope, who, "--epsilon", "5", "--reason", "r")
    res = cli(
        home, "cleanroom", "query", "quantiles", "-e", "1", "-g", "region", "-m", "watch_time_s",
        "-w", "event_type=view", "--quantiles", "0.5,0.9", "--analyst", "ana", "--org", "acme",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "p50" in res.stdout and "p90" in res.stdout and "us-south" in res.stdout
    for args, message in (
        (["frobnicate", "-e", "1"], "unknown template"),
        (["count", "-e", "0"], "epsilon must be greater than 0"),
        (["count", "-e", "3"], "at most 2"),
        (["count", "-e", "1", "-g", "user_id"], "cannot group by"),
        (["count", "-e", "1", "-w", "region=atlantis"], "outside the declared domain"),
        (["count", "-e", "1", "-w", "region"], "COLUMN=VALUE"),
    ):
        res = cli(home, "cleanroom", "query", *args, "--analyst", "ana", "--org", "acme", "--json")
        assert res.exit_code == 2, (args, res.output)
        assert message in json.loads(res.stdout)["message"], args


def test_a_placed_file_is_not_a_snapshot(home: Path) -> None:
    for scope, who in (("analyst", "ana"), ("organization", "acme")):
        cli(home, "cleanroom", "budget", "set", scope, who, "--epsilon", "5", "--reason", "r")
    (home / "cleanroom" / "snapshot.json").unlink()
    (home / "cleanroom" / "events.parquet").write_bytes(b"PAR1 placed by hand")
    res = cli(home, "cleanroom", "query", "count", "-e", "1", "--org", "acme", "--json")
    assert res.exit_code == 10 and "no snapshot" in json.loads(res.stdout)["message"]
    res = cli(home, "cleanroom", "budget", "--org", "acme", "--json")
    assert json.loads(res.stdout)["budgets"][0]["epsilon_spent"] == 0, "nothing was charged"
    res = cli(home, "cleanroom", "snapshot")  # rebuilt from the vault, not from that file
    assert res.exit_code == 0 and "(full; 40,000 opened" in " ".join(res.stdout.split())
    res = cli(home, "cleanroom", "query", "count", "-e", "1", "--analyst", "ana", "--org", "acme",
              "--json")  # fmt: skip
    assert res.exit_code == 0, res.output


def test_uninitialized_home(tmp_path: Path) -> None:
    res = cli(tmp_path / "nothing", "cleanroom", "budget", "--json")
    assert res.exit_code == 3
    assert json.loads(res.stdout)["error"] == "NotInitialized"


def test_templates_listing() -> None:
    res = runner.invoke(app, ["cleanroom", "templates", "--json"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert set(out["templates"]) == {"count", "distinct_users", "sum", "mean", "quantiles", "ctr"}
    assert out["private_keys"] == ["campaign_id"]
    assert len(out["public_dimensions"]["day"]) == 28
