"""The policy in force: read it, explain a decision, load a new set (administrators only)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from bastion.clock import iso
from bastion.errors import InputError
from bastion.events import AccessDecision
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError
from bastion.gateway.models import AccessContext
from bastion.gateway.recording import new_request_id, receipt_out, record
from bastion.gateway.refusals import input_error_kind, reject_request
from bastion.policy import (
    Action,
    JustificationType,
    PlanRequest,
    PolicyRejected,
    PrincipalSpec,
    explain,
)
from bastion.policy.compiler import MAX_POLICY_BYTES
from bastion.policy.invariants import InvariantViolated

router = APIRouter(tags=["policy"])


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_POLICY_BYTES, description="Cedar policies.")
    reason: str = Field(min_length=1, max_length=2000)


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=128)
    action: Literal["read", "search", "export", "analyze"] = "read"
    fields: list[str] | None = Field(default=None, max_length=64)
    context: AccessContext = Field(default_factory=AccessContext)
    principal: dict[str, Any] | None = Field(
        default=None,
        description="Explain for another principal (administrators and auditors only).",
    )


@router.get("/policy", response_model=dict[str, Any], responses=ERROR_RESPONSES)
def current_policy(principal: CurrentPrincipal, rt: RuntimeDep) -> dict[str, Any]:
    """The policy set in force: version, hash, each policy's id, effect and obligations."""
    stored = rt.policy_store.active()
    engine = rt.engine()
    return {
        "version": stored.version if stored else None,
        "sha256": engine.sha256,
        "policies": [p.to_json() for p in engine.policies.policies],
        "text": engine.policies.text,
    }


@router.post("/policy", response_model=dict[str, Any], responses=ERROR_RESPONSES)
def load_policy(
    body: PolicyIn, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> dict[str, Any]:
    """Validate against the schema, record the change in the ledger, then activate.

    An invalid set (a parse error, an unknown attribute or entity, a bad annotation) is
    refused with 422 and the policy in force stays.
    """
    rid = new_request_id(request)
    decision = rt.engine().can_administer(principal)
    if not decision.allowed:
        event = AccessDecision(
            actor=principal.actor(),
            # Typed text: a keyed commitment by default (the text kept in the database).
            reason=rt.public_text.publish(body.reason),
            at=iso(rt.clock.now()),
            request_id=rid,
            action=Action.ADMINISTER.value,
            dataset="@policy",
            decision="deny",
            policies=list(decision.policy_ids),
            denied_reason=decision.reason,
        )
        (receipt,) = record(rt, [event])
        err = ApiError(403, "denied", f"not allowed to change policy: {decision.reason}")
        err.receipt = receipt_out(receipt)
        err.request_id = rid
        raise err
    try:
        result = rt.policy_store.load(body.text, principal.actor(), body.reason, source="request")
    except InvariantViolated as exc:
        # The counterexamples name attribute values, never a person: safe to return.
        raise reject_request(
            rt,
            principal,
            request,
            kind="policy-breaks-invariant",
            message=str(exc),
            detail={
                "errors": exc.errors[:50],
                "invariants": [r.to_json() for r in exc.report.broken],
            },
        ) from None
    except PolicyRejected as exc:
        raise reject_request(
            rt,
            principal,
            request,
            kind="policy-rejected",
            message=str(exc),
            detail={"errors": exc.errors[:50]},
        ) from None
    rt.policy.invalidate()
    out = result.to_json()
    if result.receipt is not None:
        out["receipt"] = receipt_out(result.receipt).model_dump()
    return out


@router.post("/policy/explain", response_model=dict[str, Any], responses=ERROR_RESPONSES)
def explain_decision(
    body: ExplainIn, request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> dict[str, Any]:
    """Which policies decide a request and what each field becomes. Reveals no data."""
    engine = rt.engine()
    subject: Any = principal
    if body.principal is not None:
        if not (principal.is_auditor or engine.can_administer(principal).allowed):
            raise ApiError(403, "denied", "only administrators and auditors explain for others")
        try:
            subject = PrincipalSpec.parse(body.principal, source="principal")
        except InputError as exc:
            raise ApiError(422, "invalid-input", str(exc)) from None
    ctx = body.context
    try:
        explanation = explain(
            engine,
            subject,
            PlanRequest(
                dataset=body.dataset,
                action=Action(body.action),
                fields=tuple(body.fields) if body.fields is not None else None,
                purpose=ctx.purpose,
                justification=JustificationType(ctx.justification.type)
                if ctx.justification
                else None,
                ticket=ctx.ticket or "",
                ticket_subjects=tuple(ctx.ticket_subjects),
            ),
        )
    except InputError as exc:
        status, kind = input_error_kind(exc)
        raise reject_request(
            rt,
            principal,
            request,
            status=status,
            kind=kind,
            message=str(exc),
            dataset=body.dataset,
            field=exc.field,
        ) from None
    return explanation.to_json()
