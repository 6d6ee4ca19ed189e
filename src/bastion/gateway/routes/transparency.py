"""``GET /subjects/{id}/accesses``: who touched a person's data, with proofs they can check.

Open to the subject themselves (a token whose subject is this id) and to auditors; anyone
else is refused, and the refusal is recorded. Looking at someone's history is itself an
access and is recorded before the list is returned.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from bastion.clock import iso
from bastion.events import AccessDecision
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError, ReceiptOut
from bastion.gateway.models import ID
from bastion.gateway.recording import new_request_id, receipt_out, record
from bastion.policy import Action

router = APIRouter(tags=["transparency"])

HISTORY_DATASET = "@access-history"


class AccessesOut(BaseModel):
    subject: str
    subject_hash: str | None = Field(description="The keyed hash the ledger entries carry.")
    log_origin: str
    checkpoint: str = Field(description="The signed checkpoint every proof is against.")
    accesses: list[dict[str, Any]] = Field(
        description="Newest first: the event, its entry (base64) and a C2SP tlog-proof."
    )
    receipt: ReceiptOut = Field(description="The entry recording this lookup.")


@router.get(
    "/subjects/{subject_id}/accesses", response_model=AccessesOut, responses=ERROR_RESPONSES
)
def subject_accesses(
    subject_id: Annotated[str, Path(pattern=ID)],
    request: Request,
    principal: CurrentPrincipal,
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=0, description="Only entries below this index.")] = None,
) -> AccessesOut:
    """Every access to the subject's data (Access Transparency), each verifiable offline."""
    rid = new_request_id(request)
    decision = rt.engine().can_read_access_history(principal, subject_id)
    subject_hash = rt.subject_ref_for_id(subject_id)
    event = AccessDecision(
        actor=principal.actor(),
        reason="access history lookup",
        at=iso(rt.clock.now()),
        request_id=rid,
        action=Action.READ.value,
        dataset=HISTORY_DATASET,
        decision="allow" if decision.allowed else "deny",
        policies=list(decision.policy_ids),
        subjects=[subject_hash] if subject_hash and decision.allowed else [],
        denied_reason=None if decision.allowed else decision.reason,
    )
    (receipt,) = record(rt, [event])
    rt.metrics.decisions.labels("read-history", event.decision).inc()
    if not decision.allowed:
        err = ApiError(403, "denied", "only the subject and auditors may read this history")
        err.receipt = receipt_out(receipt)
        err.request_id = rid
        raise err
    views: list[Any] = []
    cp = None
    if subject_hash is not None:
        cp, views = rt.subject_index.accesses(subject_hash, limit=limit, before=before)
    if cp is None:
        cp = rt.ledger.checkpoint() or rt.ledger.publish()
    return AccessesOut(
        subject=subject_id,
        subject_hash=subject_hash,
        log_origin=rt.ledger.origin,
        checkpoint=cp.text,
        accesses=[v.to_json() for v in views],
        receipt=receipt_out(receipt),
    )
