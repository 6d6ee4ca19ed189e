"""Writing records: insert or upsert a batch, change fields, delete; and the change feed.

A batch is all or nothing: one bad record refuses the whole batch, naming its row (1-based
in ``records``) and field, and nothing of it is written or logged as written.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from bastion.gateway.auth import Principal
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError
from bastion.gateway.models import ID, NAME, WriteOut
from bastion.gateway.recording import endpoint_of, new_request_id
from bastion.gateway.runtime import Runtime
from bastion.gateway.writes import WriteGate, WriteRequest, body_digest, parse_if_match
from bastion.settings import HARD_MAX_PAGE
from bastion.vault.changes import MAX_PAGE, read_changes
from bastion.vault.writes import WriteOp

router = APIRouter(tags=["writes"])

DatasetName = Annotated[str, Path(pattern=NAME, description="A dataset of the catalog.")]
RecordId = Annotated[str, Path(pattern=ID, description="The record's id (its record_id field).")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes a retry return the first answer without writing twice.",
    ),
]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description='The version the change expects, "3".')
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": WriteOut, "description": "New versions, tokens and the ledger receipt."},
    **ERROR_RESPONSES,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WriteRecordsRequest(_Strict):
    records: list[dict[str, Any]] = Field(min_length=1, max_length=HARD_MAX_PAGE)
    mode: Literal["insert", "upsert"] = Field(
        default="insert",
        description="insert: a taken id is 409; upsert: it becomes the record's next version.",
    )


class ChangeFieldsRequest(_Strict):
    fields: dict[str, Any] = Field(min_length=1, max_length=64)


class ChangeOut(BaseModel):
    seq: int
    record_id: str
    version: int
    op: str
    fields: list[str]
    at: str


class ChangesOut(BaseModel):
    dataset: str
    changes: list[ChangeOut]
    cursor: int = Field(description="Pass as ?after= to get the next changes.")


def _request(
    request: Request,
    dataset: str,
    op: WriteOp,
    records: list[dict[str, Any]],
    body: object,
    *,
    record_id: str | None = None,
    if_match: str | None = None,
    key: str | None = None,
) -> WriteRequest:
    return WriteRequest(
        dataset=dataset,
        op=op,
        records=records,
        request_id=new_request_id(request),
        endpoint=endpoint_of(request),
        # Only a retry with the same key compares it: without one, no digest is worth its cost.
        body_sha256=body_digest(request.method, request.url.path, body) if key else "",
        record_id=record_id,
        if_match=parse_if_match(if_match),
        idempotency_key=key,
    )


def _answer(rt: Runtime, principal: Principal, req: WriteRequest, response: Response) -> WriteOut:
    out = WriteGate(rt).write(principal, req)
    if len(out.records) == 1:
        response.headers["ETag"] = f'"{out.records[0].version}"'  # what If-Match takes back
    return out


@router.post("/datasets/{dataset}/records", responses=_RESPONSES, response_model=WriteOut)
def write_records(
    dataset: DatasetName,
    body: WriteRecordsRequest,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> WriteOut:
    """Insert (or upsert) a batch of records, all or nothing."""
    op = WriteOp.UPSERT if body.mode == "upsert" else WriteOp.INSERT
    req = _request(
        request, dataset, op, body.records, body.model_dump(mode="json"), key=idempotency_key
    )
    return _answer(rt, principal, req, response)


@router.patch(
    "/datasets/{dataset}/records/{record_id}", responses=_RESPONSES, response_model=WriteOut
)
def change_record(
    dataset: DatasetName,
    record_id: RecordId,
    body: ChangeFieldsRequest,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> WriteOut:
    """Change some fields of a record; ``If-Match`` makes it conditional (412 if stale)."""
    req = _request(
        request,
        dataset,
        WriteOp.UPDATE,
        [body.fields],
        body.model_dump(mode="json"),
        record_id=record_id,
        if_match=if_match,
        key=idempotency_key,
    )
    return _answer(rt, principal, req, response)


@router.delete(
    "/datasets/{dataset}/records/{record_id}", responses=_RESPONSES, response_model=WriteOut
)
def delete_record(
    dataset: DatasetName,
    record_id: RecordId,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> WriteOut:
    """Delete a record (its sealed values stay in older database backups: docs/WRITES.md)."""
    req = _request(
        request,
        dataset,
        WriteOp.DELETE,
        [],
        None,
        record_id=record_id,
        if_match=if_match,
        key=idempotency_key,
    )
    return _answer(rt, principal, req, response)


@router.get("/datasets/{dataset}/changes", responses=ERROR_RESPONSES, response_model=ChangesOut)
async def changes(
    dataset: DatasetName,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    after: Annotated[int, Query(ge=0, description="The cursor: the last seq processed.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for a change.")] = 0,
) -> ChangesOut:
    """What changed in a dataset, in commit order: keys, versions, operations and field
    names, never values. Long-polls up to ``wait`` seconds when nothing is new."""
    decision = await run_in_threadpool(rt.engine().can_follow_changes, principal, dataset)
    if not decision.allowed:
        raise ApiError(403, "denied", f"policy denies following changes: {decision.reason}")
    if dataset not in rt.catalog.names:
        raise ApiError(404, "unknown-dataset", f"unknown dataset {dataset!r}")
    deadline = time.monotonic() + min(wait, rt.config.max_change_wait_s)
    while True:
        found = await run_in_threadpool(read_changes, rt.db, dataset, after, limit)
        if found or time.monotonic() >= deadline:
            break
        # A poll of one indexed range query; 200 ms keeps a follower's lag small without
        # a notification channel that every backend would have to provide.
        await asyncio.sleep(0.2)
    return ChangesOut(
        dataset=dataset,
        changes=[ChangeOut.model_validate(c.to_json()) for c in found],
        cursor=found[-1].seq if found else after,
    )
