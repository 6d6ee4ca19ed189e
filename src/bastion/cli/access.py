"""``bastion access``: access requests, approvals, grants, break-glass and reviews."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import access_app
from bastion.cli.policy import _split, build_model, policy_context, read_principal
from bastion.errors import InputError
from bastion.keys.signing import load_or_create_signing_key
from bastion.policy import (
    GRANT_KEY_NAME,
    AccessRequestSpec,
    Action,
    ApprovalConfig,
    ApprovalService,
    JustificationType,
    StepOutcome,
)

AS_OPTION = typer.Option(..., "--as", help="Who acts: the principal as JSON, or @file.json.")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, option: str = "--duration") -> timedelta:
    """``90s``, ``30m``, ``8h`` or ``2d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InputError("use a number and a unit: 90s, 30m, 8h or 2d", field=option)
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@contextmanager
def approval_service(home: Path | None) -> Iterator[ApprovalService]:
    from bastion.gateway.runtime import public_text_for
    from bastion.vault import open_vault
    from bastion.vault.lookup import VaultLookup

    with policy_context(home) as ctx:
        key = load_or_create_signing_key(ctx.home.keyring_dir, GRANT_KEY_NAME)
        config = ApprovalConfig.from_settings(ctx.home.settings)
        # The ledger is public: approval events name subjects by the vault's keyed refs.
        vault = open_vault(ctx.home, ctx.db, ctx.clock)
        try:
            yield ApprovalService(
                ctx.db,
                ctx.ledger,
                ctx.clock,
                ctx.runtime.engine,
                key,
                subject_refs=VaultLookup(vault).subject_refs,
                # Typed text: a keyed commitment in the log by default (the home's free_text).
                public_text=public_text_for(ctx.home, ctx.db, vault),
                config=config,
            )
        finally:
            vault.close()


def _report(out: StepOutcome, as_json: bool, headline: str) -> None:
    if as_json:
        emit_json({"ok": True, **out.to_json()})
        return
    rec = out.request
    console.print(f"{headline} (ledger index {out.receipt.index})")
    console.print(
        f"  request {rec.id}: {rec.status}, {len(rec.approvers)}/{rec.approvers_required} "
        f"approvals, {rec.action.value} {rec.dataset} [{', '.join(rec.fields)}]"
    )
    if out.grant is not None:
        console.print(f"  grant {out.grant.grant_id} expires {out.grant.claims.expires_at}")
        console.print(f"  token: {out.grant.token}", soft_wrap=True)
    if out.review_id:
        console.print(f"  review {out.review_id} is due after the access (mandatory)")


def _spec(
    dataset: str,
    action: Action,
    fields: list[str] | None,
    subjects: list[str] | None,
    justification: JustificationType,
    detail: str,
    ticket: str,
    purpose: str,
    duration: str | None,
    all_subjects: bool = False,
    max_uses: int | None = None,
) -> AccessRequestSpec:
    return build_model(
        AccessRequestSpec,
        "request",
        dataset=dataset,
        action=action,
        fields=_split(fields),
        subjects=_split(subjects) or (),
        justification_type=justification,
        justification_detail=detail,
        ticket=ticket,
        purpose=purpose,
        duration_seconds=int(parse_duration(duration).total_seconds()) if duration else None,
        all_subjects=all_subjects,
        max_uses=max_uses,
    )


DATASET = typer.Option(..., "--dataset", help="Dataset of the catalog.")
ACTION = typer.Option(Action.READ, "--action", help="read, search or export.")
FIELDS = typer.Option(None, "--fields", help="Fields (comma-separated or repeated).")
SUBJECTS = typer.Option(None, "--subject", help="A subject the access is about; repeat.")
DETAIL = typer.Option(..., "--detail", help="Why, in words (recorded).")
TICKET = typer.Option("", "--ticket", help="Ticket or case reference.")
PURPOSE = typer.Option("", "--purpose", help="Purpose of the access.")
ALL_SUBJECTS = typer.Option(
    False, "--all-subjects", help="Every subject (name none): needs one more approver."
)
MAX_USES = typer.Option(
    None, "--max-uses", min=1, help="Releases the grant allows (default 1; break-glass 10)."
)


@access_app.command("request")
def request_cmd(
    who: str = AS_OPTION,
    dataset: str = DATASET,
    action: Action = ACTION,
    fields: list[str] | None = FIELDS,
    subjects: list[str] | None = SUBJECTS,
    justification: JustificationType = typer.Option(..., "--justification", help="Reason type."),
    detail: str = DETAIL,
    ticket: str = TICKET,
    purpose: str = PURPOSE,
    duration: str | None = typer.Option(None, "--duration", help="How long: 30m, 8h, 2d."),
    all_subjects: bool = ALL_SUBJECTS,
    max_uses: int | None = MAX_USES,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Ask approvers for access; policy sets how many distinct approvers it needs."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        spec = _spec(
            dataset,
            action,
            fields,
            subjects,
            justification,
            detail,
            ticket,
            purpose,
            duration,
            all_subjects,
            max_uses,
        )
        with approval_service(home) as svc:
            out = svc.request(principal, spec)
        _report(out, as_json, f"Requested: needs {out.request.approvers_required} approver(s)")


@access_app.command("approve")
def approve_cmd(
    request_id: str = typer.Argument(..., help="The access request."),
    who: str = AS_OPTION,
    reason: str = typer.Option(..., "--reason", help="Why you approve (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Approve a request; the last required approval issues a signed, time-boxed grant."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        with approval_service(home) as svc:
            out = svc.approve(request_id, principal, reason)
        _report(out, as_json, "Granted" if out.grant else "Approved")


@access_app.command("deny")
def deny_cmd(
    request_id: str = typer.Argument(..., help="The access request."),
    who: str = AS_OPTION,
    reason: str = typer.Option(..., "--reason", help="Why you deny (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Deny a pending request."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        with approval_service(home) as svc:
            out = svc.deny(request_id, principal, reason)
        _report(out, as_json, "Denied")


@access_app.command("revoke")
def revoke_cmd(
    grant_id: str = typer.Argument(..., help="The grant to revoke."),
    who: str = AS_OPTION,
    reason: str = typer.Option(..., "--reason", help="Why (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Revoke a grant before it expires."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        with approval_service(home) as svc:
            out = svc.revoke(grant_id, principal, reason)
        _report(out, as_json, f"Revoked {grant_id}")


@access_app.command("break-glass")
def break_glass_cmd(
    who: str = AS_OPTION,
    dataset: str = DATASET,
    action: Action = ACTION,
    fields: list[str] | None = FIELDS,
    subjects: list[str] | None = SUBJECTS,
    justification: JustificationType = typer.Option(
        JustificationType.BREAK_GLASS, "--justification", help="break_glass or production_alert."
    ),
    detail: str = DETAIL,
    ticket: str = TICKET,
    purpose: str = PURPOSE,
    duration: str | None = typer.Option(None, "--duration", help="At most 1h; default 30m."),
    max_uses: int | None = MAX_USES,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Emergency access now: alerts, expires soon, and must be reviewed afterwards."""
    with reported_errors(as_json):
        principal = read_principal(who, "--as")
        spec = _spec(
            dataset,
            action,
            fields,
            subjects,
            justification,
            detail,
            ticket,
            purpose,
            duration,
            max_uses=max_uses,
        )
        with approval_service(home) as svc:
            out = svc.break_glass(principal, spec)
        _report(out, as_json, "[bold red]BREAK-GLASS[/] access granted and alerted")


@access_app.command("review")
def review_cmd(
    review_id: str = typer.Argument(..., help="The break-glass review."),
    who: str = AS_OPTION,
    outcome: str = typer.Option(..., "--outcome", help="justified or unjustified."),
    notes: str = typer.Option(..., "--notes", help="Findings (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Close the mandatory review of a break-glass access."""
    with reported_errors(as_json):
        if outcome not in ("justified", "unjustified"):
            raise InputError("must be justified or unjustified", field="--outcome")
        principal = read_principal(who, "--as")
        with approval_service(home) as svc:
            out = svc.review(review_id, principal, outcome, notes)  # type: ignore[arg-type]
        _report(out, as_json, f"Reviewed {review_id}: {outcome}")


@access_app.command("list")
def list_cmd(
    status: str | None = typer.Option(None, "--status", help="pending, granted, denied, ..."),
    reviews: bool = typer.Option(False, "--reviews", help="List break-glass reviews instead."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List access requests (or break-glass reviews), newest first."""
    with reported_errors(as_json), approval_service(home) as svc:
        if reviews:
            items: list[Any] = svc.reviews(status=status, limit=limit)
            overdue = {r.id for r in svc.overdue_reviews()}
            if as_json:
                emit_json(
                    {
                        "ok": True,
                        "reviews": [r.to_json() | {"overdue": r.id in overdue} for r in items],
                    }
                )
                return
            table = Table(title="Break-glass reviews")
            for col in ("review", "request", "principal", "status", "due"):
                table.add_column(col)
            for r in items:
                due = f"[red]{r.due_at} OVERDUE[/]" if r.id in overdue else r.due_at
                table.add_row(r.id, r.request_id, r.principal_id, r.status, due)
            console.print(table)
            return
        records = svc.list_requests(status=status, limit=limit)
        if as_json:
            emit_json({"ok": True, "requests": [r.to_json() for r in records]})
            return
        table = Table(title="Access requests")
        for col in ("request", "kind", "requester", "what", "why", "approvals", "status"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(
                r.id,
                r.kind,
                f"{r.requester.id} ({r.requester.employer or '-'}, "
                f"{r.requester.location_country or '-'})",
                f"{r.action.value} {r.dataset}: {', '.join(r.fields)}",
                f"{r.justification_type.value}: {r.justification_detail}",
                f"{len(r.approvers)}/{r.approvers_required}",
                r.status,
            )
        console.print(table)


@access_app.command("expire")
def expire_cmd(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Record in the ledger every grant that expired and every request that lapsed."""
    with reported_errors(as_json), approval_service(home) as svc:
        events = svc.expire_due()
        if as_json:
            emit_json({"ok": True, "expired": [e.model_dump(mode="json") for e in events]})
        else:
            console.print(f"Recorded {len(events)} expiries")
