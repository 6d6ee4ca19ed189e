"""Request-scoped dependencies: the runtime, and the authenticated principal.

Authentication failures are recorded in the ledger (``AuthFailure``) before the 401 goes out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from bastion.gateway import tracing
from bastion.gateway.auth import AuthError, Principal
from bastion.gateway.recording import endpoint_of, new_request_id
from bastion.gateway.refusals import record_auth_failure
from bastion.gateway.runtime import Runtime
from bastion.policy.registry import Claimed, PrincipalRefused, check_entry

# auto_error=False: a missing header must reach our handler, which records the attempt.
_bearer = HTTPBearer(auto_error=False, description="An EdDSA JWT from a trusted issuer.")


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # Async: a cached token is a dictionary lookup and a fresh one one Ed25519 check, both
    # cheaper than a hop to the thread pool. Only recording a failure blocks (the ledger).
    rt: Runtime = request.app.state.runtime
    new_request_id(request)
    token = credentials.credentials if credentials is not None else None
    with tracing.span(tracing.stage("authenticate")):
        try:
            principal = rt.verifier.verify(token)
            if rt.config.principals == "registered":
                await _admit(rt, principal)
        except AuthError as exc:
            endpoint = endpoint_of(request)
            raise await run_in_threadpool(record_auth_failure, rt, request, exc, endpoint) from None
    request.state.principal = principal
    return principal


async def _admit(rt: Runtime, principal: Principal) -> None:
    """A signed token is not enough: its (issuer, sub) must be registered and allowed every
    attribute it claims. Data subjects are not registered one by one; the issuer's claim
    allowances decide who may assert the role (only Bastion's own issuer by default)."""
    if principal.is_subject:
        return
    claimed = Claimed(
        issuer=principal.issuer,
        sub=principal.sub or principal.id,
        role=principal.role,
        employer=principal.employer,
        employer_country=principal.employer_country,
        location_country=principal.location_country,
        clearance=principal.clearance,
    )
    try:
        fresh, entry = rt.registry.peek(claimed.issuer, claimed.sub)
        if fresh:
            check_entry(entry, claimed)  # a dictionary lookup: no hop to the thread pool
        else:
            await run_in_threadpool(rt.registry.admit, claimed)
    except PrincipalRefused as exc:
        raise AuthError(
            exc.kind, exc.detail, claimed={"sub": claimed.sub, "iss": claimed.issuer}
        ) from None


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
