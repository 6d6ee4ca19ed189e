"""``bastion init``: create BASTION_HOME with its config, keys and database."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.home import CONFIG_NAME, DEFAULT_CONFIG, Home, default_home_path


def init_home(path: Path, origin: str = "bastion.example/log") -> Home:
    """Create the directory layout and config file. Idempotent for the config."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    (path / "keys").mkdir(exist_ok=True)
    os.chmod(path / "keys", 0o700)
    (path / "log").mkdir(exist_ok=True)
    cfg = path / CONFIG_NAME
    if not cfg.exists():
        cfg.write_text(DEFAULT_CONFIG.replace("{origin}", origin))
        os.chmod(cfg, 0o600)
    return Home.load(path)


def mount(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        home: Path | None = HOME_OPTION,
        origin: str = typer.Option("bastion.example/log", help="The log's origin line."),
        policy_pack: bool = typer.Option(
            True,
            "--policy-pack/--no-policy-pack",
            help="Install the shipped Cedar policy pack (recorded in the ledger).",
        ),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Create BASTION_HOME: the config, the keys and the database."""
        with reported_errors(as_json):
            from bastion.wiring import initialize

            h = init_home((home or default_home_path()).resolve(), origin)
            summary = initialize(h, policy_pack=policy_pack)
            if as_json:
                emit_json({"ok": True, "home": str(h.path), **summary})
            else:
                console.print(f"Initialized Bastion home at [bold]{h.path}[/]")
                for k, v in summary.items():
                    console.print(f"  {k}: {v}")
