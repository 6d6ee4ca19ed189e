"""``POST /cleanroom/queries``: differentially private aggregates for the ad partner.

The gateway authenticates the partner's token and asks policy for the ``analyze`` action on
the dataset; the clean room then checks the template, charges the budget, adds noise and
records the query before answering. Refusals read alike (the clean room's design).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bastion.clock import iso
from bastion.errors import InputError
from bastion.events import AccessDecision
from bastion.extras import require
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES, ApiError
from bastion.gateway.recording import new_request_id, receipt_out, record
from bastion.gateway.refusals import reject_request
from bastion.policy import Action, PlanRequest

router = APIRouter(tags=["clean room"])

CLEANROOM_DATASET = "events"


@router.post("/cleanroom/queries", response_model=dict[str, Any], responses=ERROR_RESPONSES)
def cleanroom_query(
    body: dict[str, Any], request: Request, principal: CurrentPrincipal, rt: RuntimeDep
) -> dict[str, Any]:
    """Run one query template (count, distinct users, sum, mean, quantiles, CTR) with DP noise.

    The body is the clean room's query request: ``template``, ``epsilon``, ``group_by``,
    ``where``, ``measure``, ``clamp``, ... (unknown parameters are refused).
    """
    require("analytics", "the clean room")  # not installed: a 503 that names the extra
    from bastion.cleanroom import QueryFailed, QueryRefused
    from bastion.cleanroom.snapshot import SnapshotUnavailable

    rid = new_request_id(request)
    plan = rt.engine().plan(
        principal, PlanRequest(dataset=CLEANROOM_DATASET, action=Action.ANALYZE)
    )
    if not plan.allowed:
        event = AccessDecision(
            actor=principal.actor(),
            reason="clean-room query",
            at=iso(rt.clock.now()),
            request_id=rid,
            action=Action.ANALYZE.value,
            dataset=CLEANROOM_DATASET,
            decision="deny",
            policies=list(plan.policies),
            denied_reason=plan.denied_reason or "denied by policy",
        )
        (receipt,) = record(rt, [event])
        err = ApiError(403, "denied", "this principal may not analyze this dataset")
        err.receipt = receipt_out(receipt)
        err.request_id = rid
        raise err
    cleanroom = rt.cleanroom()
    # The clean room records the analyst in the public log: by the name entries may carry
    # (a data subject's keyed ref, never their id), should policy ever let one analyze.
    analyst = principal.actor().id
    try:
        result = cleanroom.run_query(
            body,
            analyst=analyst,
            organization=principal.employer or analyst,
            reason=f"gateway request {rid}",
        )
    except InputError as exc:
        raise reject_request(
            rt,
            principal,
            request,
            kind="invalid-query",
            message=str(exc),
            dataset=CLEANROOM_DATASET,
            # A column the catalog does not know is typed text in the log (and in the reason).
            field=exc.field,
        ) from None
    except QueryRefused as exc:
        raise ApiError(403, "query-refused", str(exc)) from None
    except QueryFailed as exc:
        raise ApiError(503, "query-failed", str(exc)) from None
    except SnapshotUnavailable as exc:
        # No snapshot, or one too old to answer from (it may still count an erased person),
        # or one that fails its check. Raised before any budget is charged; says only ages.
        raise ApiError(503, "snapshot-unavailable", str(exc)) from None
    out: dict[str, Any] = result.to_json()
    return out
