"""``bastion subjects``: a data subject's rights, run by the custodian's privacy officers.

The same service as the gateway's ``/subjects`` routes (``gateway/subject_rights.py``), on the
home's runtime: every command names who acts (``--as``, a principal as JSON, decided by the
same Cedar policy), and everything is recorded in the log as through the API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import subjects_app
from bastion.cli.policy import read_principal
from bastion.errors import InputError
from bastion.home import Home
from bastion.policy import PrincipalSpec

T = TypeVar("T")
AS_OPTION = typer.Option(
    ...,
    "--as",
    help="Who acts: a principal as JSON or @file.json (e.g. a cleared privacy officer).",
)


class RightsFailed(InputError):
    """A refusal or failure of the rights service, as the CLI reports it (non-zero exit)."""


@contextmanager
def rights_service(home_path: Path | None) -> Iterator[Any]:
    from bastion.gateway.runtime import Runtime
    from bastion.gateway.subject_rights import SubjectRights

    rt = Runtime.open(Home.load(home_path))
    try:
        yield SubjectRights(rt)
    finally:
        rt.close()


def _call(take: Callable[[], T]) -> T:
    """Refusals (recorded, with their receipt) and a ledger outage as clear errors."""
    from bastion.gateway.errors import ApiError
    from bastion.gateway.subject_rights import RightsRefused

    try:
        return take()
    except RightsRefused as exc:
        where = f" (recorded at ledger index {exc.receipt.index})" if exc.receipt else ""
        raise RightsFailed(f"{exc.kind}: {exc}{where}") from None
    except ApiError as exc:
        raise RightsFailed(f"{exc.kind}: {exc.message}") from None


def _who(value: str) -> PrincipalSpec:
    return read_principal(value, "--as")


@subjects_app.command("export")
def export_cmd(
    subject_id: str = typer.Argument(..., help="The data subject's id."),
    out: Path = typer.Option(..., "--out", help="Where to write the export (JSON)."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write every record about a subject, in clear, to a file (recorded before it opens)."""
    with reported_errors(as_json):
        principal = _who(who)
        with rights_service(home) as rights:
            result = _call(lambda: rights.export(principal, subject_id, os.urandom(16).hex()))
        # Only the owner may read it: it holds the subject's data in clear.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result.document, f, indent=2, sort_keys=True)
            f.write("\n")
        summary = {
            "ok": True,
            "file": str(out),
            "records": result.records,
            "receipt": result.document["receipt"],
        }
        if as_json:
            emit_json(summary)
        else:
            console.print(
                f"Wrote {result.records:,} records to {out} "
                f"(recorded at ledger index {result.receipt.index}).",
                highlight=False,
            )


@subjects_app.command("erase")
def erase_cmd(
    subject_id: str = typer.Argument(..., help="The data subject's id."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Open an erasure request for a subject (it runs after the cooling-off period, unless held)."""
    with reported_errors(as_json):
        principal = _who(who)
        with rights_service(home) as rights:
            request, created = _call(lambda: rights.request_erasure(principal, subject_id))
        body = request.to_json()
        if as_json:
            emit_json({"ok": True, "created": created, "request": body})
        else:
            console.print(
                f"Erasure request {body['id']}: {body['status']} (due {body['due_at']}).",
                highlight=False,
            )


@subjects_app.command("withdraw-erasure")
def withdraw_cmd(
    subject_id: str = typer.Argument(..., help="The data subject's id."),
    request_id: str = typer.Argument(..., help="The erasure request to take back."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Take back a pending erasure request during its cooling-off period (recorded)."""
    with reported_errors(as_json):
        principal = _who(who)
        with rights_service(home) as rights:
            request = _call(lambda: rights.withdraw_erasure(principal, subject_id, request_id))
        body = request.to_json()
        if as_json:
            emit_json({"ok": True, "request": body})
        else:
            console.print(f"Erasure request {body['id']}: {body['status']}.", highlight=False)


@subjects_app.command("hold")
def hold_cmd(
    subject_id: str = typer.Argument(..., help="The data subject's id."),
    reason: str = typer.Option(..., "--reason", help="Why (kept; the log carries a commitment)."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Place a legal hold on a subject: erasure waits until it is released."""
    _hold_step(
        home, who, as_json, "placed", lambda rights, p: rights.place_hold(p, subject_id, reason)
    )


@subjects_app.command("holds")
def holds_cmd(
    subject_id: str | None = typer.Option(None, "--subject", help="Only this subject's holds."),
    include_released: bool = typer.Option(False, "--all", help="Released holds too."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List legal holds (the listing is recorded)."""
    with reported_errors(as_json):
        principal = _who(who)
        with rights_service(home) as rights:
            holds, receipt = _call(
                lambda: rights.list_holds(principal, subject_id, active_only=not include_released)
            )
        if as_json:
            emit_json(
                {"ok": True, "holds": [h.to_json() for h in holds], "receipt": receipt.to_json()}
            )
            return
        table = Table("hold", "subject (keyed)", "placed", "by", "active", "reason")
        for h in holds:
            table.add_row(
                h.id,
                h.subject_hash[:28] + "…",
                h.placed_at,
                h.placed_by,
                "yes" if h.active else "no",
                h.reason,
            )
        console.print(table)


@subjects_app.command("release")
def release_cmd(
    hold_id: str = typer.Argument(..., help="The legal hold's id."),
    reason: str = typer.Option(..., "--reason", help="Why it is released."),
    who: str = AS_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Release a legal hold; erasures it held back run now."""
    _hold_step(
        home, who, as_json, "released", lambda rights, p: rights.release_hold(p, hold_id, reason)
    )


def _hold_step(
    home: Path | None,
    who: str,
    as_json: bool,
    done: str,
    act: Callable[[Any, PrincipalSpec], Any],
) -> None:
    """Place or release a hold as ``who`` (a recorded, policy-decided step)."""
    with reported_errors(as_json):
        principal = _who(who)
        with rights_service(home) as rights:
            hold = _call(lambda: act(rights, principal))
        if as_json:
            emit_json({"ok": True, "hold": hold.to_json()})
        else:
            console.print(f"Legal hold {hold.id} {done}.", highlight=False)


@subjects_app.command("process-erasures")
def process_cmd(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Execute the erasure requests that are due and not held (as `bastion serve` does)."""
    with reported_errors(as_json):
        with rights_service(home) as rights:
            done = _call(rights.process_due)
        if as_json:
            emit_json({"ok": True, "executed": [r.to_json() for r in done]})
        else:
            console.print(f"Executed {len(done)} erasure requests.", highlight=False)
