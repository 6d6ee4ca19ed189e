"""Access requests, N-person approvals, grants, break-glass and its review.

The workflow itself (and the ledger events of every step) is the policy part's
``ApprovalService``; these routes authenticate the caller, map its refusals to HTTP and make
sure a grant's token reaches only the person it was issued to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from bastion.errors import InputError
from bastion.gateway.auth import Principal
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError
from bastion.gateway.models import ID, TICKET, Justification
from bastion.gateway.recording import new_request_id, receipt_out
from bastion.gateway.refusals import reject_request
from bastion.gateway.runtime import Runtime
from bastion.policy import (
    AccessRequestRecord,
    AccessRequestSpec,
    Action,
    ApprovalRefused,
    JustificationType,
    StepOutcome,
)

router = APIRouter(tags=["access"])

RequestId = Annotated[str, Path(pattern=ID)]

_REFUSAL_STATUS: dict[str, int] = {
    "unknown-request": 404,
    "unknown-grant": 404,
    "unknown-review": 404,
    "not-pending": 409,
    "lapsed": 409,
    "duplicate-approval": 409,
    "not-active": 409,
    "already-reviewed": 409,
    "self-approval": 403,
    "not-an-approver": 403,
    "self-review": 403,
    "denied-by-policy": 403,
    "not-permitted": 403,
}


class AccessRequestIn(BaseModel):
    """Ask approvers for access (Google Access Approval's request, with Bastion's fields)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    action: Literal["read", "search", "export"] = "read"
    fields: list[str] | None = Field(default=None, max_length=64)
    subjects: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="The subjects the access is for; empty only with all_subjects.",
    )
    all_subjects: bool = Field(
        default=False,
        description="Every subject of the dataset (name none): needs more approvers.",
    )
    max_uses: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Releases the grant allows in its window (default 1, break-glass 10).",
    )
    justification: Justification
    ticket: str | None = Field(default=None, pattern=TICKET)
    purpose: str = Field(default="", max_length=200)
    duration_seconds: int | None = Field(default=None, ge=1, le=31 * 24 * 3600)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["justified", "unjustified"]
    notes: str = Field(min_length=1, max_length=4000)


class GrantOut(BaseModel):
    grant_id: str
    expires_at: str
    token: str | None = Field(
        default=None, description="The signed grant; only ever returned to its holder."
    )


class StepOut(BaseModel):
    request: dict[str, Any]
    step: str
    receipt: dict[str, Any]
    grant: GrantOut | None = None
    review_id: str | None = None


def _step_out(outcome: StepOutcome, holder: Principal) -> StepOut:
    grant = None
    if outcome.grant is not None:
        mine = outcome.grant.claims.principal == holder.id
        grant = GrantOut(
            grant_id=outcome.grant.grant_id,
            expires_at=outcome.grant.to_json()["expires_at"],
            token=outcome.grant.token if mine else None,
        )
    return StepOut(
        request=outcome.request.to_json(),
        step=outcome.event.step,
        receipt=receipt_out(outcome.receipt).model_dump(),
        grant=grant,
        review_id=outcome.review_id,
    )


def _refused(exc: ApprovalRefused, request: Request) -> ApiError:
    err = ApiError(_REFUSAL_STATUS.get(exc.kind, 403), exc.kind, str(exc))
    if exc.receipt is not None:
        err.receipt = receipt_out(exc.receipt)
    err.request_id = new_request_id(request)
    return err


def _step(
    rt: Runtime,
    principal: Principal,
    request: Request,
    take: Callable[[], StepOutcome],
    dataset: str | None = None,
) -> StepOut:
    try:
        return _step_out(take(), principal)
    except ApprovalRefused as exc:
        raise _refused(exc, request) from None
    except InputError as exc:
        kind = "unknown-dataset" if "unknown dataset" in str(exc) else "invalid-input"
        raise reject_request(
            rt,
            principal,
            request,
            status=404 if kind == "unknown-dataset" else 422,
            kind=kind,
            message=str(exc),
            dataset=dataset,
            field=exc.field,
        ) from None


def _spec(body: AccessRequestIn) -> AccessRequestSpec:
    return AccessRequestSpec(
        dataset=body.dataset,
        action=Action(body.action),
        fields=tuple(body.fields) if body.fields is not None else None,
        subjects=tuple(dict.fromkeys(body.subjects)),
        justification_type=JustificationType(body.justification.type),
        justification_detail=body.justification.detail,
        ticket=body.ticket or "",
        purpose=body.purpose,
        duration_seconds=body.duration_seconds,
        all_subjects=body.all_subjects,
        max_uses=body.max_uses,
    )


def _may_see(rt: Runtime, principal: Principal, rec: AccessRequestRecord) -> bool:
    if rec.requester.id == principal.id:
        return True
    engine = rt.engine()
    resource = rt.approvals.resource(rec)
    return engine.can_approve(principal, resource).allowed or principal.is_auditor


@router.post("/access-requests", response_model=StepOut, status_code=201, responses=ERROR_RESPONSES)
def create_access_request(
    body: AccessRequestIn, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> StepOut:
    """Open an access request; policy decides how many distinct approvers it needs."""
    return _step(
        rt, principal, request, lambda: rt.approvals.request(principal, _spec(body)), body.dataset
    )


@router.get("/access-requests", response_model=list[dict[str, Any]], responses=ERROR_RESPONSES)
def list_access_requests(
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    status: Annotated[
        Literal["pending", "granted", "denied", "expired", "break-glass"] | None, Query()
    ] = None,
    scope: Annotated[
        Literal["mine", "to-approve"], Query(description="Own requests, or those I may approve.")
    ] = "mine",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Your own requests, or the requests you may approve."""
    if scope == "mine":
        records = rt.approvals.list_requests(status=status, requester_id=principal.id, limit=limit)
    else:
        records = [
            r
            for r in rt.approvals.list_requests(status=status, limit=limit)
            if r.requester.id != principal.id and _may_see(rt, principal, r)
        ]
    return [r.to_json() for r in records]


@router.get(
    "/access-requests/{request_id}", response_model=dict[str, Any], responses=ERROR_RESPONSES
)
def get_access_request(
    request_id: RequestId, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> dict[str, Any]:
    """One request, to its requester and to those who may approve it."""
    try:
        rec = rt.approvals.get(request_id)
    except ApprovalRefused as exc:
        raise _refused(exc, request) from None
    if not _may_see(rt, principal, rec):
        raise ApiError(404, "unknown-request", f"no access request {request_id!r}")
    return rec.to_json()


@router.post(
    "/access-requests/{request_id}/approve", response_model=StepOut, responses=ERROR_RESPONSES
)
def approve(
    request_id: RequestId,
    body: DecisionIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> StepOut:
    """Add one approval. The last one needed issues the time-boxed, signed grant."""
    return _step(
        rt, principal, request, lambda: rt.approvals.approve(request_id, principal, body.reason)
    )


@router.post(
    "/access-requests/{request_id}/deny", response_model=StepOut, responses=ERROR_RESPONSES
)
def deny(
    request_id: RequestId,
    body: DecisionIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> StepOut:
    """Refuse a pending request."""
    return _step(
        rt, principal, request, lambda: rt.approvals.deny(request_id, principal, body.reason)
    )


@router.post("/grants/{grant_id}/revoke", response_model=StepOut, responses=ERROR_RESPONSES)
def revoke(
    grant_id: Annotated[str, Path(pattern=ID)],
    body: DecisionIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> StepOut:
    """Revoke a grant (approvers), or give up one's own."""
    return _step(
        rt, principal, request, lambda: rt.approvals.revoke(grant_id, principal, body.reason)
    )


@router.post("/break-glass", response_model=StepOut, status_code=201, responses=ERROR_RESPONSES)
def break_glass(
    body: AccessRequestIn, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> StepOut:
    """Immediate, short access for an emergency: alerts now, must be reviewed afterwards."""
    return _step(
        rt,
        principal,
        request,
        lambda: rt.approvals.break_glass(principal, _spec(body)),
        body.dataset,
    )


@router.get("/reviews", response_model=list[dict[str, Any]], responses=ERROR_RESPONSES)
def reviews(
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    status: Annotated[Literal["pending", "justified", "unjustified"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Break-glass reviews: to approvers and auditors, and each holder's own."""
    out: list[dict[str, Any]] = []
    for review in rt.approvals.reviews(status=status, limit=limit):
        rec = rt.approvals.get(review.request_id)
        if review.principal_id == principal.id or _may_see(rt, principal, rec):
            out.append(review.to_json())
    return out


@router.post("/reviews/{review_id}", response_model=StepOut, responses=ERROR_RESPONSES)
def review(
    review_id: Annotated[str, Path(pattern=ID)],
    body: ReviewIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> StepOut:
    """Close a break-glass review (someone other than the holder, allowed to approve)."""
    return _step(
        rt,
        principal,
        request,
        lambda: rt.approvals.review(review_id, principal, body.outcome, body.notes),
    )
