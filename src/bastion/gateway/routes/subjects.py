"""A data subject's rights: export, erasure requests and their receipts, legal holds.

See ``gateway/subject_rights.py`` for what each does and records, and docs/SUBJECTS.md for
the API and the export format. A refusal answers with the receipt of the entry recording it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES
from bastion.gateway.models import ID
from bastion.gateway.recording import new_request_id, receipt_out
from bastion.gateway.runtime import Runtime
from bastion.gateway.subject_rights import ErasureRequest, RightsRefused, SubjectRights

router = APIRouter(tags=["subjects"])

SubjectId = Annotated[str, Path(pattern=ID, description="The data subject's id.")]
HEX_ID = r"^[0-9a-f]{32}$"


def install(app: FastAPI, runtime: Runtime) -> SubjectRights:
    """The app's rights service (its tables made now), for the routes and the executor."""
    rights = SubjectRights(runtime)
    app.state.subject_rights = rights
    return rights


def _rights(request: Request) -> SubjectRights:
    rights: SubjectRights = request.app.state.subject_rights
    return rights


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1, max_length=2000, description="Why (kept; logged as a commitment)."
    )


class ErasureOut(BaseModel):
    request: dict[str, Any]
    checkpoint: str | None = Field(
        default=None, description="A signed checkpoint the deletion receipt's proof is against."
    )
    proof: str | None = Field(
        default=None, description="C2SP tlog-proof of the deletion receipt's inclusion."
    )


class HoldOut(BaseModel):
    hold: dict[str, Any]


class HoldsOut(BaseModel):
    holds: list[dict[str, Any]]
    receipt: dict[str, Any]


def _erasure_out(rights: SubjectRights, found: ErasureRequest) -> ErasureOut:
    out = ErasureOut(request=found.to_json())
    if found.receipt_index is not None:
        out.checkpoint, out.proof = rights.proof(found.receipt_index)
    return out


@router.get("/subjects/{subject_id}/export", responses=ERROR_RESPONSES)
def export_subject(
    subject_id: SubjectId, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> Response:
    """Every record about the subject, in every dataset, every field in clear (GDPR art. 15
    and 20), in the ``bastion.subject-export`` JSON format, naming its own ledger receipt.
    Only the subject and cleared privacy officers; a refusal is a recorded 403."""
    rid = new_request_id(request)
    try:
        out = _rights(request).export(principal, subject_id, rid)
    except RightsRefused as exc:
        raise exc.api_error(rid) from None
    return JSONResponse(out.document)


@router.post(
    "/subjects/{subject_id}/erasure-requests",
    response_model=ErasureOut,
    status_code=201,
    responses=ERROR_RESPONSES,
)
def request_erasure(
    subject_id: SubjectId, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> Response:
    """Open an erasure request. It runs after ``[subjects] erasure_cooling_off_seconds`` (at
    once when 0) unless a legal hold is in place: then it stays pending (status "held") and
    runs once the hold is released. A request already open is returned (200), not doubled."""
    rid = new_request_id(request)
    rights = _rights(request)
    try:
        found, created = rights.request_erasure(principal, subject_id)
    except RightsRefused as exc:
        raise exc.api_error(rid) from None
    body = _erasure_out(rights, found)
    return JSONResponse(body.model_dump(), status_code=201 if created else 200)


@router.get(
    "/subjects/{subject_id}/erasure-requests/{request_id}",
    response_model=ErasureOut,
    responses=ERROR_RESPONSES,
)
def erasure_status(
    subject_id: SubjectId,
    request_id: Annotated[str, Path(pattern=HEX_ID)],
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> ErasureOut:
    """A request's status; once executed, the deletion receipt with its inclusion proof."""
    rights = _rights(request)
    try:
        found = rights.erasure_status(principal, subject_id, request_id)
    except RightsRefused as exc:
        raise exc.api_error(new_request_id(request)) from None
    return _erasure_out(rights, found)


@router.post(
    "/subjects/{subject_id}/erasure-requests/{request_id}/withdraw",
    response_model=ErasureOut,
    responses=ERROR_RESPONSES,
)
def withdraw_erasure(
    subject_id: SubjectId,
    request_id: Annotated[str, Path(pattern=HEX_ID)],
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> ErasureOut:
    """Take back a pending erasure request during its cooling-off period (or while a legal
    hold keeps it waiting); recorded. A request that executed cannot be withdrawn (409)."""
    rights = _rights(request)
    try:
        found = rights.withdraw_erasure(principal, subject_id, request_id)
    except RightsRefused as exc:
        raise exc.api_error(new_request_id(request)) from None
    return _erasure_out(rights, found)


@router.post(
    "/subjects/{subject_id}/legal-holds",
    response_model=HoldOut,
    status_code=201,
    responses=ERROR_RESPONSES,
)
def place_hold(
    subject_id: SubjectId,
    body: ReasonIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> HoldOut:
    """Place a legal hold on a subject (cleared privacy officers): erasure waits for it."""
    try:
        hold = _rights(request).place_hold(principal, subject_id, body.reason)
    except RightsRefused as exc:
        raise exc.api_error(new_request_id(request)) from None
    return HoldOut(hold=hold.to_json())


@router.get("/legal-holds", response_model=HoldsOut, responses=ERROR_RESPONSES)
def list_holds(
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    subject: Annotated[str | None, Query(pattern=ID)] = None,
    all_holds: Annotated[bool, Query(alias="all", description="Released ones too.")] = False,
) -> HoldsOut:
    """The legal holds in place (cleared privacy officers); the listing is recorded."""
    try:
        holds, receipt = _rights(request).list_holds(principal, subject, active_only=not all_holds)
    except RightsRefused as exc:
        raise exc.api_error(new_request_id(request)) from None
    return HoldsOut(holds=[h.to_json() for h in holds], receipt=receipt_out(receipt).model_dump())


@router.post("/legal-holds/{hold_id}/release", response_model=HoldOut, responses=ERROR_RESPONSES)
def release_hold(
    hold_id: Annotated[str, Path(pattern=HEX_ID)],
    body: ReasonIn,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> HoldOut:
    """Release a legal hold (cleared privacy officers); erasures it held back run now."""
    try:
        hold = _rights(request).release_hold(principal, hold_id, body.reason)
    except RightsRefused as exc:
        raise exc.api_error(new_request_id(request)) from None
    return HoldOut(hold=hold.to_json())
