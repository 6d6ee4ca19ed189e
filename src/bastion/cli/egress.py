"""``bastion egress``: load, list, show, run and retire declared flows (the custodian's side).

The recipient's commands (``verify``, ``keygen``, ``trust-bundle``) are in ``egress_verify``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    read_input_file,
    reported_errors,
)
from bastion.cli.groups import egress_app
from bastion.errors import InputError

__all__ = ["egress_app"]


@contextmanager
def _egress(home: Path | None, *, public_text: bool = False) -> Iterator[Any]:
    """Egress on the home's database, vault and log; closed on the way out."""
    from bastion.clock import SystemClock
    from bastion.egress.wiring import open_egress
    from bastion.home import Home
    from bastion.ledger.log import open_log
    from bastion.vault import open_vault
    from bastion.wiring import open_store

    h = Home.load(home)
    db = open_store(h)
    try:
        clock = SystemClock()
        log = open_log(h, db, clock, background=False)
        try:
            vault = open_vault(h, db, clock)
            reason = _public_reason(h, db, vault) if public_text else (lambda t: t)
            yield open_egress(h, db, vault, log, clock, public_reason=reason)
        finally:
            log.close()
    finally:
        db.close()


def _public_reason(home: Any, db: Any, vault: Any) -> Any:
    """Typed reasons reach the public log as the home's ``free_text`` says (a commitment by
    default), like a policy load's."""
    from bastion.gateway.runtime import public_text_for

    return public_text_for(home, db, vault).publish


@egress_app.command("load")
def load_cmd(
    file: Path = typer.Argument(..., help="A flow file (YAML): one or more flows."),
    reason: str = typer.Option(..., "--reason", help="Why the flows change (recorded)."),
    actor: str = typer.Option("operator", "--actor", help="Who loads them (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check every flow of a file and load them all, recorded in the ledger; a flow that
    fails a check is refused (and the refusal recorded), and then none is loaded."""
    from bastion.events import Actor

    with reported_errors(as_json):
        text = read_input_file(file, "flow file")
        with _egress(home, public_text=True) as egress:
            who = Actor(id=actor, kind="operator")
            result = egress.loader.load(text, source=str(file), actor=who, reason=reason)
        if as_json:
            emit_json({"ok": True, **result.to_json()})
            return
        for name in result.loaded:
            console.print(f"Loaded flow {name} (ledger index {result.indexes[name]})")
        for name in result.unchanged:
            console.print(f"Unchanged: flow {name}")


@egress_app.command("list")
def list_cmd(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The loaded flows: version, recipient, cursor, last run, when next due."""
    with reported_errors(as_json), _egress(home) as egress:
        rows = []
        for state in egress.store.states():
            stored = egress.store.stored(state.name)
            flow = stored.flow if stored else None
            rows.append(
                {
                    "flow": state.name,
                    "version": state.version,
                    "status": state.status,
                    "kind": flow.kind if flow else None,
                    "recipient": flow.recipient.id if flow else None,
                    "dataset": flow.source.dataset if flow else None,
                    "cursor": state.cursor,
                    "runs": state.run,
                    "next_due": state.next_due,
                }
            )
    if as_json:
        emit_json({"ok": True, "flows": rows})
        return
    if not rows:
        console.print("No flow is loaded: write one (docs/EGRESS.md) and `bastion egress load`.")
        return
    table = Table(title="Flows")
    columns = ("flow", "version", "status", "kind", "recipient", "dataset", "runs", "next_due")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) if r[c] is not None else "-" for c in columns))
    console.print(table)


@egress_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="The flow."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """A flow's declaration in force and its recent runs."""
    with reported_errors(as_json), _egress(home) as egress:
        stored = egress.store.stored(name)
        if stored is None:
            raise InputError(f"no flow named {name!r} is loaded")
        runs = [r.to_json() for r in egress.store.runs(name)]
        out = {
            "flow": stored.flow.declaration(),
            "sha256": stored.sha256,
            "loaded_by": stored.actor_id,
            "loaded_at": stored.loaded_at,
            "ledger_index": stored.ledger_index,
            "runs": runs,
        }
        agg = stored.flow.aggregate
        if agg is not None:
            out["epsilon"] = {"spent": egress.store.spent(name), "budget": agg.epsilon_budget}
    if as_json:
        emit_json({"ok": True, **out})
        return
    console.print(f"[bold]{name}[/] v{stored.flow.version} {stored.sha256[:12]}")
    console.print(f"loaded {stored.loaded_at} by {stored.actor_id}, entry {stored.ledger_index}")
    if "epsilon" in out:
        eps = out["epsilon"]
        console.print(f"epsilon spent {eps['spent']:g} of {eps['budget']:g}")
    table = Table(title="Runs")
    for col in ("run", "manifest", "rows", "tombstones", "chunks", "cursor", "delivered"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            str(r["run"]),
            r["manifest_id"][:12],
            f"{r['rows']:,}",
            f"{r['tombstones']:,}",
            str(r["chunks"]),
            f"({r['cursor_after']}, {r['cursor_through']}]",
            r["delivered_at"] or "[yellow]pending[/]",
        )
    console.print(table)


@egress_app.command("run")
def run_cmd(
    name: str = typer.Argument(..., help="The flow to run once."),
    full: bool = typer.Option(False, "--full", help="Deliver everything, not what changed."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a flow once: record its manifest, then deliver (a pending delivery goes first)."""
    spinner = console.status(f"running {name}", spinner="dots") if not as_json else _nothing()
    with reported_errors(as_json), _egress(home) as egress, spinner:
        result = egress.runner.run(name, full=True if full else None)
    if as_json:
        emit_json({"ok": True, **result.to_json()})
        return
    if result.status == "nothing-new":
        console.print(f"{name}: nothing new since the last run")
        return
    console.print(
        f"{name} run {result.run}: {result.rows:,} rows, {result.tombstones:,} tombstones in "
        f"{result.chunks} chunk(s), manifest {result.manifest_id} (ledger index "
        f"{result.ledger_index}), {result.status}"
    )


@egress_app.command("retire")
def retire_cmd(
    name: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why the flow stops (recorded)."),
    actor: str = typer.Option("operator", "--actor"),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop a flow: no run after this; its history stays."""
    from bastion.events import Actor

    with reported_errors(as_json), _egress(home, public_text=True) as egress:
        index = egress.loader.retire(name, actor=Actor(id=actor, kind="operator"), reason=reason)
    if as_json:
        emit_json({"ok": True, "flow": name, "ledger_index": index})
    else:
        console.print(f"Retired {name} (ledger index {index})")


@egress_app.command("worker")
def worker_cmd(
    once: bool = typer.Option(False, "--once", help="Run what is due now, then stop."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run every flow when it is due, until stopped (``bastion serve`` does the same)."""
    from bastion.egress.scheduler import run_due

    with reported_errors(as_json), _egress(home) as egress:
        interval = egress.interval_s or 60.0
        while True:
            results = run_due(egress)
            for r in results:
                if as_json:
                    emit_json(r)
                else:
                    console.print(f"{r['flow']}: {r.get('status') or r.get('error')}")
            if once:
                return
            time.sleep(interval)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
