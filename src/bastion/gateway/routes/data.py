"""Reading protected data: one record, a batch, a search page, an export. All on the one path."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

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
from bastion.gateway.pipeline import Gate, Selection, endpoint_of, new_request_id, reject
from bastion.policy import Action

router = APIRouter(tags=["data"])

DatasetName = Annotated[str, Path(pattern=NAME, description="A dataset of the catalog.")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ReleaseOut, "description": "Released values and the ledger receipt."},
    **ERROR_RESPONSES,
}


def _json(out: dict[str, Any]) -> Response:
    return Response(orjson.dumps(out), media_type="application/json")


@router.post("/datasets/{dataset}/read", responses=_RESPONSES, response_model=None)
def read_record(
    dataset: DatasetName,
    body: ReadRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Read one record: the fields policy releases, each in its planned form."""
    out = Gate(rt).release(
        principal,
        action=Action.READ,
        dataset=dataset,
        fields=body.fields,
        context=body.context,
        selection=Selection(record_ids=(body.record_id,)),
        request_id=new_request_id(request),
        endpoint=endpoint_of(request),
    )
    return _json(out)


@router.post("/datasets/{dataset}/batch-read", responses=_RESPONSES, response_model=None)
def batch_read(
    dataset: DatasetName,
    body: BatchReadRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Read many records in one decision and one ledger entry."""
    rid = new_request_id(request)
    if len(body.record_ids) > rt.config.max_batch:
        raise reject(
            rt,
            principal.actor(),
            request_id=rid,
            endpoint=endpoint_of(request),
            status=422,
            kind="batch-too-large",
            message=f"at most {rt.config.max_batch} record ids per batch",
            dataset=dataset,
            field="record_ids",
        )
    out = Gate(rt).release(
        principal,
        action=Action.READ,
        dataset=dataset,
        fields=body.fields,
        context=body.context,
        selection=Selection(record_ids=tuple(body.record_ids)),
        request_id=rid,
        endpoint=endpoint_of(request),
    )
    return _json(out)


@router.post("/datasets/{dataset}/search", responses=_RESPONSES, response_model=None)
def search(
    dataset: DatasetName,
    body: SearchRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """One page of records matching structured filters (subject or record id)."""
    rid = new_request_id(request)
    if body.page_size > rt.config.max_page_size:
        raise reject(
            rt,
            principal.actor(),
            request_id=rid,
            endpoint=endpoint_of(request),
            status=422,
            kind="page-size-out-of-range",
            message=f"page_size must be at most {rt.config.max_page_size}",
            dataset=dataset,
            field="page_size",
        )
    out = Gate(rt).release(
        principal,
        action=Action.SEARCH,
        dataset=dataset,
        fields=body.fields,
        context=body.context,
        selection=Selection(
            filters=tuple(body.filters), page_size=body.page_size, page_token=body.page_token
        ),
        request_id=rid,
        endpoint=endpoint_of(request),
    )
    return _json(out)


@router.post("/datasets/{dataset}/export", responses=_RESPONSES, response_model=None)
def export(
    dataset: DatasetName,
    body: ExportRequest,
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
) -> Response:
    """Export matching records (also recorded as an Export event)."""
    rid = new_request_id(request)
    if body.limit > rt.config.max_export:
        raise reject(
            rt,
            principal.actor(),
            request_id=rid,
            endpoint=endpoint_of(request),
            status=422,
            kind="export-too-large",
            message=f"an export holds at most {rt.config.max_export} records",
            dataset=dataset,
            field="limit",
        )
    out = Gate(rt).release(
        principal,
        action=Action.EXPORT,
        dataset=dataset,
        fields=body.fields,
        context=body.context,
        selection=Selection(filters=tuple(body.filters), page_size=body.limit),
        request_id=rid,
        endpoint=endpoint_of(request),
        destination=body.destination,
    )
    return _json(out)
