"""Entry point: ``bastion``. Each part contributes commands in its own module.

The modules are imported only when one of their commands runs: ``bastion --help`` lists the
commands from the table below without importing any part (Cedar, pydantic, FastAPI and the
analytics engines together take over a second to import), and ``bastion ledger verify``
imports the verifier, not the clean room. ``tests/cli/test_lazy_cli.py`` checks that this
table matches what the modules define.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup


@dataclass(frozen=True)
class Entry:
    """A top-level command: its one-line help, and the ``bastion.cli`` modules that define it.

    A module either attaches commands to a group of ``cli.groups`` when imported (``group``
    names that group) or has ``mount(app)`` for commands of its own at the top level.
    """

    help: str
    modules: tuple[str, ...]
    group: str | None = None


COMMANDS: dict[str, Entry] = {
    "init": Entry("Create BASTION_HOME: the config, the keys and the database.", ("home_cmd",)),
    "config": Entry(
        "The settings in force for a home, and where each came from.",
        ("config_cmd",),
        "config_app",
    ),
    "synth": Entry(
        "Generate users, videos and events (deterministic for a seed, streamed in chunks).",
        ("synth",),
    ),
    "ingest": Entry(
        "Validate, pseudonymize and seal a file; on the first bad row nothing is stored.",
        ("ingest",),
    ),
    "demo": Entry(
        "Generate, ingest, shred, rotate, gate access, approve a release, run DP queries, audit.",
        ("demo",),
    ),
    "serve": Entry(
        "Run the gateway: policy-checked, logged-before-released access, plus /log/.",
        ("serve",),
    ),
    "vault": Entry(
        "Sealed records, per-subject keys, shredding, rotation, retention.",
        ("vault", "vault_sweep"),
        "vault_app",
    ),
    "subjects": Entry(
        "Data-subject rights: export, erasure requests, legal holds.",
        ("subjects",),
        "subjects_app",
    ),
    "egress": Entry(
        "Declared flows to outside recipients: load, run, deliver, verify on receipt.",
        ("egress", "egress_verify"),
        "egress_app",
    ),
    "keys": Entry("Key providers: local keyring or PKCS#11 HSM.", ("keys",), "keys_app"),
    "ledger": Entry(
        "The transparency log: append, checkpoints, proofs, verification.",
        ("ledger", "ledger_verify"),
        "ledger_app",
    ),
    "policy": Entry("Cedar policies: validate, load, explain.", ("policy",), "policy_app"),
    "principals": Entry(
        "Principals and their JWT bearer tokens.", ("principals",), "principals_app"
    ),
    "access": Entry(
        "Access requests, approvals, grants and break-glass.", ("access",), "access_app"
    ),
    "tickets": Entry(
        "Registered tickets: the subjects a read under a ticket may touch.",
        ("tickets",),
        "tickets_app",
    ),
    "releases": Entry(
        "Release assurance: reviews, provenance, approvals, verification.",
        ("releases",),
        "releases_app",
    ),
    "cleanroom": Entry(
        "Differentially private analytics for the ad partner.", ("cleanroom",), "cleanroom_app"
    ),
    "witness": Entry(
        "A C2SP tlog-witness: cosign checkpoints only if consistent with what it saw.",
        ("witness",),
    ),
}


def load_command(name: str) -> Any:
    """Import the modules behind one top-level command and build its click command."""
    entry = COMMANDS[name]
    app = typer.Typer()
    for module in entry.modules:
        loaded = importlib.import_module(f"bastion.cli.{module}")
        mount = getattr(loaded, "mount", None)
        if mount is not None:
            mount(app)
    if entry.group is not None:
        from bastion.cli import groups

        app.add_typer(getattr(groups, entry.group))
    return typer.main.get_group(app).commands[name]


class LazyGroup(TyperGroup):
    """The top-level group: commands come from ``COMMANDS``, each built when first asked for.

    (Typed ``Any``: Typer's click is vendored and private, ``typer._click``.)
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # From the table: asking each command for its help would import every part.
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.help) for name, entry in COMMANDS.items()])


app = typer.Typer(
    name="bastion",
    cls=LazyGroup,
    help="Bastion: software for a trusted custodian of user data.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help: Typer's Rich panels would build every command to lay out its help.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # Typer builds a group only for an app with a callback or commands of its own; the
    # commands here all come lazily from LazyGroup.
    pass


if __name__ == "__main__":
    app()
