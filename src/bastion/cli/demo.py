"""``bastion demo``: the end-to-end story on a fresh home under BASTION_HOME."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.home import default_home_path


def mount(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        home: Path | None = HOME_OPTION,
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Generate, ingest, shred, rotate, gate access, approve a release, run DP queries, audit.

        Runs in a fresh demo home, BASTION_HOME/demo, rebuilt on every run so the story is
        repeatable; explore it afterwards with BASTION_HOME=<that folder> bastion ...
        """
        with reported_errors(as_json):
            from rich.console import Console

            from bastion.cli.home_cmd import init_home
            from bastion.demo import story
            from bastion.wiring import initialize, open_store

            root = (home or default_home_path()).resolve() / "demo"
            if root.exists():
                shutil.rmtree(root)
            h = init_home(root, origin="demo.bastion.example/log")
            initialize(h)
            out = Console(stderr=True) if as_json else console
            db = open_store(h)
            try:
                report = story.run(h, db, out)
            finally:
                db.close()
            if as_json:
                emit_json({"ok": True, "home": str(root), **report})
            else:
                console.print(
                    f"\n[bold green]Demo complete[/] in {report['seconds']}s."
                    f" Explore it: BASTION_HOME={root} bastion --help"
                )
