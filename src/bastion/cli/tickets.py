"""``bastion tickets``: register, show and close tickets (as a ticketing service).

A read under a ticket touches only the subjects of the open, registered ticket it names
(``[gateway] tickets = "registered"``). The gateway's ``POST /tickets`` does the same as
``bastion tickets open``; each step is recorded in the ledger before it takes effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from bastion.cli.access import AS_OPTION, parse_duration
from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import tickets_app
from bastion.cli.policy import _split, build_model, policy_context, read_principal
from bastion.errors import InputError
from bastion.policy import TicketOutcome, TicketRecord, TicketService, TicketSpec


@contextmanager
def ticket_service(home: Path | None) -> Iterator[TicketService]:
    from bastion.vault import open_vault
    from bastion.vault.lookup import VaultLookup

    with policy_context(home) as ctx:
        # The ledger is public: ticket events name subjects by the vault's keyed refs.
        vault = open_vault(ctx.home, ctx.db, ctx.clock)
        try:
            yield TicketService(
                ctx.db,
                ctx.ledger,
                ctx.clock,
                ctx.runtime.engine,
                subject_refs=VaultLookup(vault).subject_refs,
            )
        finally:
            vault.close()


def _show(ticket: TicketRecord, svc: TicketService) -> None:
    t = ticket.to_json(svc.clock.now())
    console.print(f"ticket {t['id']}: {t['status']}, expires {t['expires_at']}")
    console.print(f"  subjects: {', '.join(t['subjects'])}")
    if t["assignees"]:
        console.print(f"  assignees: {', '.join(t['assignees'])}")
    console.print(f"  opened by {t['opened_by']} at {t['opened_at']} (ledger {t['ledger_index']})")


def _report(out: TicketOutcome, svc: TicketService, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "ok": True,
                "step": out.event.step,
                "ledger_index": out.receipt.index,
                "ticket": out.ticket.to_json(svc.clock.now()),
            }
        )
        return
    console.print(f"Ticket {out.event.step} (ledger index {out.receipt.index})")
    _show(out.ticket, svc)


@tickets_app.command("open")
def open_cmd(
    ticket_id: str = typer.Argument(..., help="The ticket id, e.g. SUP-1042."),
    subjects: list[str] = typer.Option(..., "--subject", help="A subject it names; repeat."),
    assignees: list[str] | None = typer.Option(
        None, "--assignee", help="A principal id who may read under it; repeat (default: any)."
    ),
    expires: str = typer.Option("7d", "--expires", help="Open for: 8h, 7d, at most 30d."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a ticket naming its subjects (policy's open_ticket: ticketing services)."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        with ticket_service(home) as svc:
            spec = build_model(
                TicketSpec,
                "ticket",
                id=ticket_id,
                subjects=tuple(_split(subjects) or ()),
                assignees=tuple(_split(assignees) or ()),
                expires_at=svc.clock.now() + parse_duration(expires, "--expires"),
            )
            _report(svc.open(principal, spec), svc, as_json)


@tickets_app.command("show")
def show_cmd(
    ticket_id: str = typer.Argument(..., help="The ticket id."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a registered ticket: its subjects, assignees, expiry and status."""
    with reported_errors(as_json), ticket_service(home) as svc:
        ticket = svc.get(ticket_id)
        if ticket is None:
            raise InputError(f"no registered ticket {ticket_id!r}", field="ticket")
        if as_json:
            emit_json({"ok": True, "ticket": ticket.to_json(svc.clock.now())})
            return
        _show(ticket, svc)


@tickets_app.command("close")
def close_cmd(
    ticket_id: str = typer.Argument(..., help="The ticket id."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Close a ticket: from now on no read names it (policy's close_ticket)."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        with ticket_service(home) as svc:
            _report(svc.close(ticket_id, principal), svc, as_json)
