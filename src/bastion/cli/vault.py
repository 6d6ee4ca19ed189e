"""``bastion vault``: shred a subject, show what the vault holds, purge shredded records."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from pydantic import BaseModel
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import vault_app
from bastion.clock import SystemClock
from bastion.events import Actor
from bastion.home import Home
from bastion.ledger.api import Receipt
from bastion.vault import Vault, open_vault

ACTOR_OPTION = typer.Option(
    None, "--actor", help="Who is acting (default: $BASTION_ACTOR or the login name)."
)


def operator(actor: str | None) -> Actor:
    name = actor or os.environ.get("BASTION_ACTOR") or getpass.getuser() or "operator"
    return Actor(id=name, kind="operator")


@contextmanager
def opened_vault(home_path: Path | None) -> Iterator[Vault]:
    """Load the home, open its database and vault; says clearly if the home is not initialized."""
    from bastion.wiring import open_store

    home = Home.load(home_path)
    db = open_store(home)
    try:
        vault = open_vault(home, db, SystemClock())
        try:
            yield vault
        finally:
            vault.close()
    finally:
        db.close()


def record(home_path: Path | None, event: BaseModel) -> Receipt:
    """Append an operator action to the home's ledger and publish a checkpoint that holds it."""
    from bastion.ledger.log import open_log
    from bastion.wiring import open_store

    home = Home.load(home_path)
    db = open_store(home)
    try:
        log = open_log(home, db, SystemClock(), background=False)
        try:
            receipt = log.append(event)
            log.publish()
            return receipt
        finally:
            log.close()
    finally:
        db.close()


@vault_app.command("shred")
def shred(
    subject: str = typer.Argument(..., help="The subject id (e.g. a user id) to erase."),
    reason: str = typer.Option("subject erasure request", "--reason", help="Why (recorded)."),
    actor: str | None = ACTOR_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Crypto-shred a subject: destroy its data key and pseudonyms; print the deletion receipt."""
    with reported_errors(as_json), opened_vault(home) as vault:
        receipt = vault.shred(subject, operator(actor), reason)
        body = receipt.model_dump(mode="json", exclude_none=True)
        entry = record(home, receipt)
        if as_json:
            emit_json({"ok": True, "receipt": body, "ledger": entry.to_json()})
            return
        console.print("[bold green]Shredded.[/] Deletion receipt:")
        table = Table(show_header=False)
        for key in (
            "type",
            "subject_hash",
            "key_id",
            "records_affected",
            "pseudonyms_removed",
            "method",
            "at",
            "reason",
        ):
            table.add_row(key, str(body[key]))
        table.add_row("actor", receipt.actor.id)
        table.add_row("ledger index", str(entry.index))
        console.print(table)


@vault_app.command("stats")
def stats(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Records per dataset, values per classification, subjects, keys."""
    with reported_errors(as_json), opened_vault(home) as vault:
        s = vault.stats()
        if as_json:
            emit_json({"ok": True, **s.to_json()})
            return
        console.print(f"Key provider: [bold]{s.provider}[/]")
        records = Table(title="Records")
        records.add_column("dataset")
        records.add_column("records", justify="right")
        for name, n in s.records.items():
            records.add_row(name, f"{n:,}")
        console.print(records)
        values = Table(title="Values by classification")
        values.add_column("classification")
        values.add_column("values", justify="right")
        values.add_column("stored as")
        stored = {
            "protected": "sealed",
            "interoperable": "sealed (+ token if identifying)",
            "public": "clear",
        }
        for name, n in s.values_by_classification.items():
            values.add_row(name, f"{n:,}", stored.get(name, ""))
        console.print(values)
        console.print(
            f"subjects with a live data key: {s.subjects:,}   pseudonyms: {s.pseudonyms:,}   "
            f"erasure secrets: {s.erasure_secrets:,}   shredded records awaiting purge: "
            f"{s.dead_records:,}"
        )


@vault_app.command("purge")
def purge(
    limit: int = typer.Option(100_000, "--limit", help="At most this many records."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete records of shredded subjects (already unreadable ciphertext)."""
    with reported_errors(as_json), opened_vault(home) as vault:
        n = vault.purge_shredded(limit)
        if as_json:
            emit_json({"ok": True, "purged": n})
        else:
            console.print(f"Purged {n:,} shredded records.")
