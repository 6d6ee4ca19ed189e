"""The gateway's ASGI app: ``create_app(runtime)``.

Routes live in ``routes/``; every protected route goes through ``pipeline.Gate`` (authenticate →
decide → plan → record → open → transform → respond). This module only assembles them, maps
errors to responses, and mounts the ledger's C2SP tlog-tiles router at ``/log/``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion import __version__
from bastion.errors import BastionError
from bastion.gateway.errors import (
    ApiError,
    ErrorOut,
    error_response,
    is_store_failure,
    status_for,
    store_unavailable,
)
from bastion.gateway.metrics import MetricsMiddleware, route_template
from bastion.gateway.refusals import reject_invalid_request, reject_model_error
from bastion.gateway.runtime import Runtime
from bastion.gateway.tracing import TracingMiddleware
from bastion.gateway.unicode_guard import refuse_non_unicode
from bastion.logs import configure_from_environment, request_scope, traceback_summary

log = logging.getLogger(__name__)

DESCRIPTION = """\
Bastion's gateway: every access to protected data is decided by Cedar policy, minimized per
field, approved where policy asks for it, **recorded in the transparency log before any value
leaves**, and answered with a receipt (the ledger index). The same server publishes the log
(C2SP tlog-tiles) under `/log/`.
"""


def _error_response(err: ErrorOut, status: int, headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse(err.model_dump(exclude_none=True), status_code=status, headers=headers)


ENV_SWEEP = "BASTION_GATEWAY_SWEEP_SECONDS"


def app_from_environment() -> FastAPI:
    """An app for one worker process of ``bastion serve --workers N``: opens the home named by
    BASTION_HOME itself (each worker has its own runtime; the database and the ledger's lock
    keep them consistent) and closes it at shutdown."""
    import os

    from bastion.home import Home

    configure_from_environment()
    runtime = Runtime.open(Home.load())
    return create_app(
        runtime,
        sweep_seconds=float(os.environ.get(ENV_SWEEP, "0")),
        close_runtime=True,
        background=True,
    )


def create_app(
    runtime: Runtime,
    *,
    sweep_seconds: float = 0.0,
    close_runtime: bool = False,
    background: bool = False,
) -> FastAPI:
    """The ASGI app for a runtime. ``sweep_seconds`` > 0 runs the approvals sweeper (it records
    grant expiries and lapsed requests in the ledger) in the background; ``background`` runs
    the erasure executor and the retention sweeper too (``gateway/background.py``), as
    ``bastion serve`` does."""
    from bastion.gateway.routes import register_routes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        sweeper: threading.Thread | None = None
        if sweep_seconds > 0:
            sweeper = threading.Thread(
                target=_sweep, args=(runtime, stop, sweep_seconds), daemon=True, name="sweeper"
            )
            sweeper.start()
        workers = []
        if background:
            from bastion.gateway.background import start_background

            workers = start_background(runtime, _app.state.subject_rights, stop)
        try:
            yield
        finally:
            stop.set()
            if sweeper is not None:
                sweeper.join(timeout=5)
            for worker in workers:
                worker.join(timeout=5)
            if close_runtime:
                runtime.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Bastion gateway",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        # Before anything else on every route: text that is not Unicode is a recorded 422.
        dependencies=[Depends(refuse_non_unicode)],
    )
    app.state.runtime = runtime
    # Starlette wraps the last-added middleware outermost: metrics see SafeErrors' 500s.
    app.add_middleware(SafeErrorsMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    # Outermost: the request span is the parent of the stage spans (``tracing``).
    app.add_middleware(TracingMiddleware)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = await reject_invalid_request(runtime, request, exc)
        return await _api_error(request, err)

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        # A part's own model refused a value the API schema let through (e.g. a repeated
        # subject): still the caller's input, so a recorded 422, never a 500.
        err = await reject_model_error(runtime, request, exc)
        return await _api_error(request, err)

    @app.exception_handler(BastionError)
    async def _bastion_error(request: Request, exc: BastionError) -> JSONResponse:
        status, kind = status_for(exc)
        if kind == "store-unavailable":
            runtime.metrics.store_failures.inc()
        # BastionError messages are operator-safe by contract (no protected values).
        return _error_response(
            ErrorOut(error=kind, message=str(exc), request_id=_rid(request)), status, None
        )

    async def _store_error(request: Request, exc: Exception) -> JSONResponse:
        if not is_store_failure(exc):
            raise exc  # a bug, not an outage: SafeErrorsMiddleware answers a generic 500
        runtime.metrics.store_failures.inc()
        # The route's template, never the path: a path can carry a subject or record id.
        log.error("store failure: %s on %s", type(exc).__name__, route_template(request.scope))
        return error_response(store_unavailable(exc), _rid(request))

    # Driver errors that mean the database is down, full or its connection broken (the bulk
    # counter, vault lookups, approvals, a rollback on a dead connection): a 503, not a 500.
    app.add_exception_handler(sqlite3.DatabaseError, _store_error)
    app.add_exception_handler(psycopg.Error, _store_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        body = ErrorOut(error=kind, message=str(exc.detail), request_id=_rid(request))
        headers: dict[str, Any] | None = getattr(exc, "headers", None)
        return _error_response(body, exc.status_code, headers)

    register_routes(app, runtime)
    return app


class SafeErrorsMiddleware:
    """Turns an unexpected exception into a generic 500 and logs only its type.

    A traceback or exception message may hold protected values, so none is printed (Starlette's
    own server-error handler would re-raise to the server, which logs the traceback).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with request_scope():  # log lines of this request carry its request id
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception as exc:
                # Where it failed (type and frames), never what the data was (message, locals).
                log.error(
                    "unexpected error on %s: %s", route_template(scope), traceback_summary(exc)
                )
                if started:
                    raise RuntimeError("response aborted after an internal error") from None
                await _internal_error(send)


async def _internal_error(send: Send) -> None:
    body = ErrorOut(error="internal", message="internal error").model_dump_json()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _sweep(runtime: Runtime, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            runtime.approvals.expire_due()
        except Exception as exc:  # the next round retries; expiry is also checked on use
            log.warning("approvals sweep failed: %s", type(exc).__name__)


def _rid(request: Request) -> str | None:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid
