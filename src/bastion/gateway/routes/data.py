"""Reading protected data: one record, a batch, a search page, an export. All on the one path."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from bastion.gateway.auth import Principal
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES
from bastion.gateway.models import (
    NAME,
    BatchReadRequest,
    ExportRequest,
    ReadRequest,
    ReleaseOut,
    SearchRequest,
)
from bastion.gateway.pipeline import Gate, ReleaseRequest
from bastion.gateway.recording import endpoint_of, new_request_id
from bastion.gateway.refusals import reject_request
from bastion.gateway.runtime import Runtime
from bastion.gateway.selection import Selection
from bastion.policy import Action

router = APIRouter(tags=["data"])

DatasetName = Annotated[str, Path(pattern=NAME, description="A dataset of the catalog.")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ReleaseOut, "description": "Released values and the ledger receipt."},
    **ERROR_RESPONSES,
}


def _release(
    rt: Runtime,
    principal: Principal,
    request: Request,
    dataset: str,
    body: ReadRequest | BatchReadRequest | SearchRequest | ExportRequest,
    action: Action,
    selection: Selection,
    destination: str | None = None,
) -> Response:
    out = Gate(rt).release(
        principal,
        ReleaseRequest(
            action=action,
            dataset=dataset,
            fields=body.fields,
            context=body.context,
            selection=selection,
            request_id=new_request_id(request),
            endpoint=endpoint_of(request),
            destination=destination,
        ),
    )
    return Response(out.model_dump_json(), media_type="application/json")


@router.post("/datasets/{dataset}/read", responses=_RESPONSES, response_model=None)
def read_record(
    dataset: DatasetName,
    body: ReadRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Read one record: the fields policy releases, each in its planned form."""
    selection = Selection(record_ids=(body.record_id,))
    return _release(rt, principal, request, dataset, body, Action.READ, selection)


@router.post("/datasets/{dataset}/batch-read", responses=_RESPONSES, response_model=None)
def batch_read(
    dataset: DatasetName,
    body: BatchReadRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Read many records in one decision and one ledger entry."""
    limit = rt.config.max_batch
    if len(body.record_ids) > limit:
        raise reject_request(
            rt,
            principal,
            request,
            kind="batch-too-large",
            message=f"at most {limit} record ids per batch",
            dataset=dataset,
            field="record_ids",
        )
    selection = Selection(record_ids=tuple(body.record_ids))
    return _release(rt, principal, request, dataset, body, Action.READ, selection)


@router.post("/datasets/{dataset}/search", responses=_RESPONSES, response_model=None)
def search(
    dataset: DatasetName,
    body: SearchRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """One page of records matching structured filters (subject or record id)."""
    limit = rt.config.max_page_size
    if body.page_size > limit:
        raise reject_request(
            rt,
            principal,
            request,
            kind="page-size-out-of-range",
            message=f"page_size must be at most {limit}",
            dataset=dataset,
            field="page_size",
        )
    selection = Selection(
        filters=tuple(body.filters), page_size=body.page_size, page_token=body.page_token
    )
    return _release(rt, principal, request, dataset, body, Action.SEARCH, selection)


@router.post("/datasets/{dataset}/export", responses=_RESPONSES, response_model=None)
def export(
    dataset: DatasetName,
    body: ExportRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Export matching records (also recorded as an Export event)."""
    limit = rt.config.max_export
    if body.limit > limit:
        raise reject_request(
            rt,
            principal,
            request,
            kind="export-too-large",
            message=f"an export holds at most {limit} records",
            dataset=dataset,
            field="limit",
        )
    selection = Selection(filters=tuple(body.filters), page_size=body.limit)
    return _release(
        rt, principal, request, dataset, body, Action.EXPORT, selection, body.destination
    )
