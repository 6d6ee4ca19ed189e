"""Refusals on the request path, each recorded before it is answered.

Bad input (unknown names, a body that fails validation, a value a part's model refuses) is a
``RequestRejected`` entry; a refused bearer token is an ``AuthFailure`` entry. The log is
public, so what a caller typed reaches it only as ``public_names`` publishes it, and a
refused token's claims are never copied into it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from bastion.clock import iso
from bastion.errors import InputError
from bastion.events import Actor, AuthFailure, RequestRejected
from bastion.gateway.auth import AuthError, Principal, bearer_token
from bastion.gateway.errors import ApiError
from bastion.gateway.public_names import public_dataset, public_field, scrub
from bastion.gateway.recording import endpoint_of, new_request_id, receipt_out, record
from bastion.gateway.runtime import Runtime

ANONYMOUS = Actor(id="anonymous", kind="principal")


def reject(
    rt: Runtime,
    actor: Actor,
    *,
    request_id: str,
    endpoint: str,
    status: int,
    kind: str,
    message: str,
    dataset: str | None = None,
    field: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ApiError:
    """Record a refused request (nothing released) and return the error to raise.

    The caller gets ``message`` as it is; the log is public, so a dataset or field name the
    catalog (or the API schema) does not declare is typed text there: a keyed commitment by
    default, also where the message quotes it."""
    rt.metrics.input_errors.labels(kind).inc()
    shown_dataset = public_dataset(rt, dataset[:128] if dataset else None)
    shown_field = public_field(rt, field[:128] if field else None)
    typed = {
        raw: shown
        for raw, shown in ((dataset, shown_dataset), (field, shown_field))
        if raw and shown and raw[:128] != shown
    }
    event = RequestRejected(
        actor=actor,
        reason=scrub(message, typed)[:4096],
        at=iso(rt.clock.now()),
        request_id=request_id,
        endpoint=endpoint[:256],
        status=status,
        error=kind,
        dataset=shown_dataset,
        field=shown_field,
    )
    (receipt,) = record(rt, [event])
    err = ApiError(status, kind, message, detail=detail)
    err.receipt = receipt_out(receipt)
    err.request_id = request_id
    return err


def reject_request(
    rt: Runtime,
    principal: Principal,
    request: Request,
    *,
    kind: str,
    message: str,
    status: int = 422,
    dataset: str | None = None,
    field: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ApiError:
    """``reject`` for a route, which has the request at hand."""
    return reject(
        rt,
        principal.actor(),
        request_id=new_request_id(request),
        endpoint=endpoint_of(request),
        status=status,
        kind=kind,
        message=message,
        dataset=dataset,
        field=field,
        detail=detail,
    )


def input_error_kind(exc: InputError) -> tuple[int, str]:
    message = str(exc)
    if "unknown dataset" in message:
        return 404, "unknown-dataset"
    if exc.field is not None and "no such field" in message:
        return 422, "unknown-field"
    return 422, "invalid-input"


def _validation_kind(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """Classify FastAPI's validation errors: (status, kind, field path)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    path = ".".join(p for p in loc if p not in ("body",)) or None
    etype = str(first.get("type", ""))
    if etype == "json_invalid":
        return 400, "malformed-json", None
    if "page_size" in loc and etype in ("less_than_equal", "greater_than_equal"):
        return 422, "page-size-out-of-range", "page_size"
    if "filters" in loc:
        return 422, "invalid-filter", path
    return 422, "invalid-input", path


async def reject_invalid_request(
    rt: Runtime, request: Request, exc: RequestValidationError
) -> ApiError:
    """A body or parameter that failed validation: record it, answer 400/422.

    FastAPI parses the JSON body before it runs dependencies, so a malformed body may arrive
    here unauthenticated: the token is checked now, and a bad token is a recorded 401.
    """
    errors = list(exc.errors())
    status, kind, path = _validation_kind(errors)
    principal: Principal | None = getattr(request.state, "principal", None)
    rid = new_request_id(request)
    if principal is None:
        token = bearer_token(request.headers.get("authorization"))
        try:
            principal = rt.verifier.verify(token)
        except AuthError as auth_exc:
            return await run_in_threadpool(
                record_auth_failure, rt, request, auth_exc, endpoint_of(request)
            )
    first = errors[0] if errors else {}
    # Bounded here, not after: the path may be typed text (a key the schema does not know),
    # which reject() must find whole in the message to keep it out of the log.
    path = path[:128] if path else None
    msg = str(first.get("msg", "invalid request"))[:300]
    where = f" at {path}" if path else ""
    message = "the request body is not valid JSON" if kind == "malformed-json" else f"{msg}{where}"
    dataset = request.path_params.get("dataset")
    actor = principal.actor()
    return await run_in_threadpool(
        lambda: reject(
            rt,
            actor,
            request_id=rid,
            endpoint=endpoint_of(request),
            status=status,
            kind=kind,
            message=message[:500],
            dataset=str(dataset) if dataset else None,
            field=path,
        )
    )


async def reject_model_error(rt: Runtime, request: Request, exc: ValidationError) -> ApiError:
    """A value refused by a part's model after the API schema accepted it: a recorded 422."""
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    path = ".".join(str(p) for p in first.get("loc", ()))[:128] or None
    message = f"{first.get('msg', 'invalid value')}"[:300] + (f" at {path}" if path else "")
    principal: Principal | None = getattr(request.state, "principal", None)
    actor = principal.actor() if principal is not None else Actor(id="anonymous")
    rid = new_request_id(request)
    dataset = request.path_params.get("dataset")
    return await run_in_threadpool(
        lambda: reject(
            rt,
            actor,
            request_id=rid,
            endpoint=endpoint_of(request),
            status=422,
            kind="invalid-input",
            message=message[:500],
            dataset=str(dataset) if dataset else None,
            field=path,
        )
    )


def _claimed_subject_ref(rt: Runtime, claimed: str) -> str:
    if not claimed:
        return "none"
    try:
        return f"ref {rt.lookup.subject_refs([claimed])[0]}"
    except Exception:  # the vault cannot be read: the refusal is still recorded, without it
        return "unavailable"


def record_auth_failure(rt: Runtime, request: Request, exc: AuthError, endpoint: str) -> ApiError:
    """Record a refused token and return the 401 to raise (503 if the ledger is down)."""
    rt.metrics.auth_failures.labels(exc.kind).inc()
    # The claims of a refused token are unauthenticated text, and the log is public and
    # append-only: anyone could otherwise write a person's id (or anything) into it for good.
    # A data subject's token even names them by subject id. So the claimed subject goes in as
    # its keyed ref (the custodian can match it), and the issuer only when it is one we trust.
    claimed_sub = _claimed_subject_ref(rt, exc.claimed_subject)
    trusted = {t.issuer for t in rt.verifier.issuers}
    claimed_iss = (
        repr(exc.claimed_issuer)
        if exc.claimed_issuer in trusted
        else ("untrusted" if exc.claimed_issuer else "none")
    )
    event = AuthFailure(
        actor=ANONYMOUS,
        reason=f"bearer token refused: {exc.detail} "
        f"(claimed sub {claimed_sub}, claimed iss {claimed_iss})",
        at=iso(rt.clock.now()),
        endpoint=endpoint[:256],
        failure=exc.kind,
    )
    (receipt,) = record(rt, [event])
    err = ApiError(
        401,
        f"auth-{exc.kind}",
        f"bearer token refused: {exc.detail}",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    err.receipt = receipt_out(receipt)
    err.request_id = new_request_id(request)
    return err
