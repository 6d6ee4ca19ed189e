"""The app-wide dependency that refuses text that is not Unicode (``surrogates`` says why).

Apart from the pure checks in ``surrogates`` because it records the refusal, and so needs
authentication and the refusal path, which themselves use those checks.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bastion.gateway.auth import AuthError, bearer_token
from bastion.gateway.errors import ApiError
from bastion.gateway.recording import endpoint_of, new_request_id
from bastion.gateway.refusals import record_auth_failure, reject
from bastion.gateway.runtime import Runtime
from bastion.gateway.surrogates import (
    KIND,
    MESSAGE,
    Location,
    body_location,
    path_text,
    url_location,
)


async def refuse_non_unicode(request: Request) -> None:
    """An app-wide dependency: it runs once the route is known and the body read, before
    authentication and before any parameter is validated or used."""
    where = url_location(request.scope)
    if where is None:
        where = body_location(await request.body())
    if where is not None:
        runtime: Runtime = request.app.state.runtime
        raise await run_in_threadpool(_refusal, runtime, request, where)


def _refusal(rt: Runtime, request: Request, where: Location) -> ApiError:
    """Record the refusal (a recorded 401 if the token is refused) and return it to raise."""
    rid = new_request_id(request)
    endpoint = endpoint_of(request)
    try:
        principal = rt.verifier.verify(bearer_token(request.headers.get("authorization")))
    except AuthError as exc:
        return record_auth_failure(rt, request, exc, endpoint)
    location = path_text(where)
    # Named by its place (a JSON path, "path", "query.<name>"), never by the text itself; the
    # dataset of the path unless the path is what holds the bad text.
    field = path_text(where[1:]) if where[0] == "body" and len(where) > 1 else location
    dataset = request.path_params.get("dataset") if where[0] != "path" else None
    return reject(
        rt,
        principal.actor(),
        request_id=rid,
        endpoint=endpoint,
        status=422,
        kind=KIND,
        message=f"{MESSAGE}, in {location}",
        dataset=str(dataset) if dataset is not None else None,
        field=field,
    )
