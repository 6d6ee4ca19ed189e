"""The demo scenario the lead's ``bastion demo`` runs: everything passes, three attempts fail."""

from __future__ import annotations

import time
from pathlib import Path

from bastion.clock import FixedClock
from bastion.demo.releases import APP, CHANNEL, run_demo
from bastion.home import Home, Settings
from bastion.ledger.log import Log
from bastion.releases.files import read_json
from bastion.releases.verify import verify_release
from bastion.store import Database


def test_demo_passes_and_rejects_the_three_attempts(
    db: Database, real_log: Log, clock: FixedClock, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home", Settings())
    home.keyring_dir.mkdir(parents=True)
    started = time.monotonic()
    report = run_demo(home=home, db=db, ledger=real_log, clock=clock, workdir=tmp_path / "demo")
    assert time.monotonic() - started < 60  # generous: the figure of merit is in report
    assert report["ok"], report
    steps = {s["step"]: s for s in report["steps"]}
    assert set(steps) == {
        "repository",
        "review",
        "build",
        "approve",
        "publish",
        "verify",
        "rebuild",
    }
    assert steps["verify"]["ok"] and steps["rebuild"]["ok"]
    codes = {r["attempt"]: r["code"] for r in report["rejected_attempts"]}
    assert codes == {
        "tampered artifact": "artifact.digest_mismatch",
        "build from an unreviewed commit": "review.unreviewed_commit",
        "review signed by the commit's own author": "review.author_is_reviewer",
    }
    # The files it leaves are what `bastion releases verify` takes.
    work = tmp_path / "demo"
    result = verify_release(
        work / "app.tar.gz",
        read_json(work / "evidence.json", "evidence"),
        read_json(work / "trust-bundle.json", "bundle"),
        app=APP,
        channel=CHANNEL,
        now=clock.now(),
    )
    assert result.ok, result.to_json()


def test_demo_can_run_twice_in_the_same_place(
    db: Database, real_log: Log, clock: FixedClock, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home", Settings())
    home.keyring_dir.mkdir(parents=True)
    first = run_demo(home=home, db=db, ledger=real_log, clock=clock, workdir=tmp_path / "d")
    second = run_demo(home=home, db=db, ledger=real_log, clock=clock, workdir=tmp_path / "d")
    assert first["ok"] and second["ok"], second
    assert first["artifact_sha256"] != second["artifact_sha256"]


def test_render_report_shows_every_step(
    db: Database, real_log: Log, clock: FixedClock, tmp_path: Path
) -> None:
    from rich.console import Console

    from bastion.demo.releases import render_report

    home = Home(tmp_path / "home", Settings())
    home.keyring_dir.mkdir(parents=True)
    report = run_demo(home=home, db=db, ledger=real_log, clock=clock, workdir=tmp_path / "d")
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert text.count("rejected") >= 3 and "ACCEPTED" not in text and "FAILED" not in text
