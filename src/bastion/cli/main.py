"""Entry point: ``bastion``. Each part contributes commands in its own module."""

from __future__ import annotations

import typer

from bastion.cli import access as _access_cmds  # noqa: F401  (bastion access ...)
from bastion.cli import cleanroom as cleanroom_cmd
from bastion.cli import config_cmd as _config_cmds  # noqa: F401  (bastion config ...)
from bastion.cli import demo as demo_cmd
from bastion.cli import groups, home_cmd, ledger_verify
from bastion.cli import ingest as ingest_cmd
from bastion.cli import keys as keys_cmd
from bastion.cli import ledger as _ledger_cmds  # noqa: F401  (bastion ledger ...)
from bastion.cli import policy as _policy_cmds  # noqa: F401  (bastion policy ...)
from bastion.cli import principals as _principals_cmds  # noqa: F401  (bastion principals ...)
from bastion.cli import releases as _releases_cmds  # noqa: F401  (bastion releases ...)
from bastion.cli import serve as serve_cmd
from bastion.cli import synth as synth_cmd
from bastion.cli import tickets as _tickets_cmds  # noqa: F401  (bastion tickets ...)
from bastion.cli import vault as vault_cmd
from bastion.cli import witness as witness_cmd

app = typer.Typer(
    name="bastion",
    help="Bastion: software for a trusted custodian of user data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _group in groups.ALL_GROUPS:
    app.add_typer(_group)

# Part modules: each exposes register(app) and/or adds commands to its group in groups.py.
home_cmd.register(app)
synth_cmd.register(app)
ledger_verify.register(app)
vault_cmd.register(app)
keys_cmd.register(app)
ingest_cmd.register(app)
demo_cmd.register(app)
witness_cmd.register(app)
serve_cmd.register(app)
cleanroom_cmd.register(app)


if __name__ == "__main__":
    app()
