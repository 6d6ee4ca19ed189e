"""Entry point: ``bastion``. Each part contributes one sub-command group."""

from __future__ import annotations

import typer

from bastion.cli import home_cmd

app = typer.Typer(
    name="bastion",
    help="Bastion: software for a trusted custodian of user data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

home_cmd.register(app)


if __name__ == "__main__":
    app()
