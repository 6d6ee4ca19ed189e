"""``bastion keys``: list KEK versions, rotate (rewrapping every data key), retire."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    progress_bar,
    reported_errors,
)
from bastion.cli.groups import keys_app
from bastion.cli.vault import ACTOR_OPTION, opened_vault, operator, record


@keys_app.command("list")
def list_keys(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """KEK versions, their state, and how many data keys each wraps."""
    with reported_errors(as_json), opened_vault(home) as vault:
        usage = vault.key_usage()
        rows = [
            {"version": v.version, "state": v.state, "data_keys": usage.get(v.version, 0)}
            for v in vault.provider.versions()
        ]
        if as_json:
            emit_json({"ok": True, "provider": vault.provider.name, "versions": rows})
            return
        table = Table(title=f"Key-encryption keys ({vault.provider.name})")
        for col in ("version", "state", "data keys"):
            table.add_column(col, justify="right" if col != "state" else "left")
        for r in rows:
            table.add_row(str(r["version"]), str(r["state"]), f"{r['data_keys']:,}")
        console.print(table)


@keys_app.command("rotate")
def rotate(
    reason: str = typer.Option("scheduled key rotation", "--reason", help="Why (recorded)."),
    actor: str | None = ACTOR_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a KEK version and rewrap every data key under it (field ciphertexts untouched)."""
    with reported_errors(as_json), opened_vault(home) as vault:
        progress = progress_bar("[bold]rewrapping", disable=as_json)
        with progress:
            task = progress.add_task("rewrap", total=None)
            event = vault.rotate(
                operator(actor),
                reason,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        body = event.model_dump(mode="json", exclude_none=True)
        entry = record(home, event)
        if as_json:
            emit_json({"ok": True, "event": body, "ledger": entry.to_json()})
        else:
            console.print(
                f"KEK version {event.new_version} is current; rewrapped {event.rewrapped:,} keys "
                f"(was version {event.old_version}); ledger index {entry.index}. Retire the old "
                f"version with `bastion keys retire {event.old_version}`."
            )


@keys_app.command("retire")
def retire(
    version: int = typer.Argument(..., help="The KEK version to destroy."),
    reason: str = typer.Option("rotation complete", "--reason", help="Why (recorded)."),
    actor: str | None = ACTOR_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Destroy an old KEK version (refused while any data key is still wrapped under it)."""
    with reported_errors(as_json), opened_vault(home) as vault:
        event = vault.retire(version, operator(actor), reason)
        entry = record(home, event)
        if as_json:
            emit_json(
                {
                    "ok": True,
                    "event": event.model_dump(mode="json", exclude_none=True),
                    "ledger": entry.to_json(),
                }
            )
        else:
            console.print(f"KEK version {version} retired (destroyed); ledger index {entry.index}.")
