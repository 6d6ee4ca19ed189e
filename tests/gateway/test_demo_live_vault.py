"""The live vault's demo scene runs end to end, checks itself, and leaks nothing to the log."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.demo.live_vault import USER, run_demo
from bastion.demo.platform import initialize_all, sample_user
from bastion.ledger.log import open_log
from bastion.store import Database


def test_live_vault_scene(db: Database, tmp_path: Path) -> None:
    home = init_home(tmp_path / "home")
    clock = SystemClock()
    initialize_all(home, db, clock)
    log = open_log(home, db, clock)
    try:
        report = run_demo(
            home=home, db=db, ledger=log, clock=clock, console=Console(file=io.StringIO())
        )
        entries = [bytes(log.entry(i)) for i in range(log.size())]
    finally:
        log.close()
    assert report["ok"] and len(report["steps"]) == 4
    types = {e.split(b'"type":"')[1].split(b'"')[0] for e in entries if b'"type":"' in e}
    assert {b"data.write", b"deletion.receipt", b"legal.hold", b"subject.erasure"} <= types
    user = sample_user(95_001)
    raw = [USER, str(user["email"]), "new.address@example.com", str(user["name"])]
    assert [(i, v) for i, e in enumerate(entries) for v in raw if v.encode() in e] == []
