"""Registered tickets: a ticketing service opens and closes them; reads name them.

The workflow (and the ledger event of every step) is the policy part's ``TicketService``;
these routes authenticate the caller and map its refusals to HTTP. Policy decides who may open
and close tickets (the ``open_ticket`` / ``close_ticket`` actions: the shipped pack allows the
custodian's principals in the role ``ticketing_service``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from bastion.errors import InputError
from bastion.gateway.auth import Principal
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError
from bastion.gateway.models import ID
from bastion.gateway.recording import new_request_id, receipt_out
from bastion.gateway.refusals import reject_request
from bastion.gateway.runtime import Runtime
from bastion.policy import Action, TicketOutcome, TicketRecord, TicketRefused, TicketSpec
from bastion.policy.tickets import MAX_ASSIGNEES, MAX_TICKET_SUBJECTS, TICKET_ID

router = APIRouter(tags=["tickets"])

TicketId = Annotated[
    str, Path(pattern=TICKET_ID.pattern, description="A ticket id, e.g. SUP-1042.")
]

_STATUS: dict[str, int] = {
    "not-permitted": 403,
    "ticket-exists": 409,
    "ticket-unknown": 404,
    "ticket-closed": 409,
    "ticket-expired": 409,
}


class TicketIn(BaseModel):
    """A ticket as the ticketing service registers it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TICKET_ID.pattern, description="The ticket id, e.g. SUP-1042.")
    subjects: list[Annotated[str, Field(pattern=ID)]] = Field(
        min_length=1,
        max_length=MAX_TICKET_SUBJECTS,
        description="The subjects staff may read under this ticket.",
    )
    assignees: list[Annotated[str, Field(pattern=ID)]] = Field(
        default_factory=list,
        max_length=MAX_ASSIGNEES,
        description="Principal ids who may read under it; empty: anyone policy allows.",
    )
    expires_at: datetime = Field(description="RFC 3339; at most 30 days ahead.")


class TicketStepOut(BaseModel):
    ticket: dict[str, Any]
    step: str
    receipt: dict[str, Any]


def _out(rt: Runtime, outcome: TicketOutcome) -> TicketStepOut:
    return TicketStepOut(
        ticket=outcome.ticket.to_json(rt.clock.now()),
        step=outcome.event.step,
        receipt=receipt_out(outcome.receipt).model_dump(),
    )


def _refused(exc: TicketRefused, request: Request) -> ApiError:
    err = ApiError(_STATUS.get(exc.kind, 403), exc.kind, str(exc))
    if exc.receipt is not None:
        err.receipt = receipt_out(exc.receipt)
    err.request_id = new_request_id(request)
    return err


def _may_see(rt: Runtime, principal: Principal, ticket: TicketRecord) -> bool:
    return (
        principal.id in ticket.assignees
        or principal.is_auditor
        or rt.tickets.may(principal, Action.OPEN_TICKET)
    )


@router.post("/tickets", response_model=TicketStepOut, status_code=201, responses=ERROR_RESPONSES)
def open_ticket(
    body: TicketIn, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> TicketStepOut:
    """Register a ticket naming its subjects (ticketing services). Recorded before it is in
    force; the log lists its subjects as keyed refs, never ids."""
    try:
        spec = TicketSpec(
            id=body.id,
            subjects=tuple(body.subjects),
            assignees=tuple(body.assignees),
            expires_at=body.expires_at,
        )
        return _out(rt, rt.tickets.open(principal, spec))
    except TicketRefused as exc:
        raise _refused(exc, request) from None
    except InputError as exc:
        raise reject_request(
            rt, principal, request, kind="invalid-input", message=str(exc), field=exc.field
        ) from None


@router.get("/tickets/{ticket_id}", response_model=dict[str, Any], responses=ERROR_RESPONSES)
def get_ticket(ticket_id: TicketId, principal: CurrentPrincipal, rt: RuntimeDep) -> dict[str, Any]:
    """One ticket, to ticketing services, auditors and its assignees."""
    ticket = rt.tickets.get(ticket_id)
    if ticket is None or not _may_see(rt, principal, ticket):
        raise ApiError(404, "ticket-unknown", f"no registered ticket {ticket_id!r}")
    return ticket.to_json(rt.clock.now())


@router.post("/tickets/{ticket_id}/close", response_model=TicketStepOut, responses=ERROR_RESPONSES)
def close_ticket(
    ticket_id: TicketId, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> TicketStepOut:
    """Close a ticket: from now on no read names it."""
    try:
        return _out(rt, rt.tickets.close(ticket_id, principal))
    except TicketRefused as exc:
        raise _refused(exc, request) from None
