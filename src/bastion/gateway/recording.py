"""Recording on the request path: a request's id, its ledger appends and their receipts.

Every route that records anything (a release, a refusal, a token that was refused) goes
through :func:`record_entries`, so a ledger that cannot record is one 503, and nothing is
released without a durable receipt. ``deps`` (authentication) and ``pipeline`` (releases)
both build on this module, which imports neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request
from pydantic import BaseModel

from bastion.catalog import SensitiveCategory
from bastion.events import encode_event
from bastion.gateway.bulk_commits import SideWriteFailed
from bastion.gateway.errors import ApiError, ReceiptOut
from bastion.gateway.public_names import client_request_id
from bastion.gateway.runtime import Runtime
from bastion.home import FreeTextMode
from bastion.ledger.api import Receipt
from bastion.logs import bind_request_id
from bastion.store import Cursor

log = logging.getLogger(__name__)


def new_request_id(request: Request) -> str:
    """The caller's ``X-Request-Id`` when it is an id that cannot carry text (a UUID or hex
    digits; it makes grant uses single-shot), else a fresh one: the log is public, and a
    header can hold anything (see ``public_names``)."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is not None:
        bind_request_id(rid)  # this call may run in another thread's copy of the context
        return rid
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    mode: FreeTextMode = runtime.public_text.mode if runtime is not None else "commit"
    rid = client_request_id(request.headers.get("x-request-id"), mode)
    request.state.request_id = rid
    bind_request_id(rid)
    return rid


def endpoint_of(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', '<unmatched>')}"


def receipt_out(receipt: Receipt) -> ReceiptOut:
    return ReceiptOut(index=receipt.index, leaf_hash=receipt.leaf_hash.hex())


def record(rt: Runtime, events: Sequence[BaseModel]) -> list[Receipt]:
    """Durably append events; any failure becomes a 503 and nothing is released."""
    return [receipt for receipt, _entry in record_entries(rt, events)]


@dataclass(frozen=True)
class Counted:
    """What a release counts against the 28 CFR 202.205 thresholds, and for whom."""

    principal_id: str
    employer: str
    usage: Mapping[SensitiveCategory, Sequence[str]]


def record_entries(
    rt: Runtime, events: Sequence[BaseModel], *, counted: Counted | None = None
) -> list[tuple[Receipt, bytes]]:
    """Durably append events; each receipt comes with the exact entry bytes it covers (what
    ``RecordedPlan.bind`` checks). Any failure of the ledger becomes a 503 and nothing is
    released.

    ``counted``: the release's bulk count, made in the same commit (the ledger's transaction,
    ``BulkCounter.reserve_in`` as its side write; shared with the principal's other releases
    of the moment, ``bulk_commits``), durable exactly with the entries. What the count raises
    comes out as it is (BulkThresholdExceeded for the caller to answer, or a store failure):
    the entries were then left out of the log, and nothing it wrote was kept."""
    start = time.perf_counter()
    try:
        # Encoded once here (canonical JSON of a bulk entry costs milliseconds): the same
        # bytes are appended and later checked against the receipt's leaf hash.
        entries = [encode_event(e) for e in events]  # type: ignore[arg-type]
        if counted is None:
            receipts = list(rt.writer.append_entries(entries))
        else:
            receipts = _append_counted(rt, entries, counted)
        if len(receipts) != len(entries):
            raise RuntimeError("the ledger returned a receipt count that does not match")
    except SideWriteFailed as failed:
        raise failed.error from None
    except Exception as exc:
        rt.metrics.ledger_failures.inc()
        log.error("ledger append failed: %s", type(exc).__name__)
        raise ApiError(
            503,
            "ledger-unavailable",
            "the ledger could not record this request, so nothing was released",
        ) from None
    rt.metrics.ledger_append.observe(time.perf_counter() - start)
    return list(zip(receipts, entries, strict=True))


def _append_counted(rt: Runtime, entries: list[bytes], counted: Counted) -> list[Receipt]:
    bulk, principal_id, employer = rt.bulk, counted.principal_id, counted.employer

    def reserve(cur: Cursor, usage: Mapping[SensitiveCategory, Sequence[str]]) -> object:
        return bulk.reserve_in(cur, principal_id, employer, usage)

    return rt.bulk_commits.append((principal_id, employer), entries, counted.usage, reserve)
