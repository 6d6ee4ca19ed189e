"""The gateway's demo story runs end to end and checks itself."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.gateway.bootstrap import initialize_all
from bastion.gateway.demo import run_demo
from bastion.ledger.log import open_log
from bastion.store import Database


def test_demo_story(db: Database, tmp_path: Path) -> None:
    home = init_home(tmp_path / "home")
    clock = SystemClock()
    initialize_all(home, db, clock)
    log = open_log(home, db, clock)
    try:
        report = run_demo(
            home=home, db=db, ledger=log, clock=clock, console=Console(file=io.StringIO())
        )
    finally:
        log.close()
    assert report["ok"] and len(report["steps"]) == 7
    assert report["seconds"] < 30
