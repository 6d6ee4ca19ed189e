"""OpenTelemetry spans on the request path, whose attributes cannot carry protected data.

The gateway speaks the OpenTelemetry *API* only. Without an SDK configured (the default) the
global tracer provider is a no-op and a span costs a few attribute lookups; a deployer who
wants traces installs ``opentelemetry-sdk`` and sets a tracer provider with an exporter
(``opentelemetry-instrument``, or ``trace.set_tracer_provider`` in their own entry point).

A trace leaves the custodian's control, so a span says only what the public log may say
without a commitment, or less:

* its name is fixed: ``bastion.request`` for the HTTP request, ``bastion.release`` for a
  release and one ``bastion.release.<stage>`` per stage (``bastion.release.authenticate``
  for the token check of any route);
* its attributes are set only through :func:`attributes`, from the closed set
  :data:`ATTRIBUTES`: a dataset the catalog declares (never a name the caller typed), the
  action, decision and error kind (enumerated), counts of fields, records and values,
  ledger indexes, and the HTTP status;
* exceptions are not recorded on spans (their messages may quote what a caller typed), and
  a failed span's status names only the error kind.

Never a value, a subject or record id, a purpose, a justification or a ticket.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.errors import BastionError
from bastion.gateway.errors import ApiError, status_for

# A ProxyTracer: it follows whatever provider is set globally, also after this import.
tracer = trace.get_tracer("bastion.gateway")

REQUEST = "bastion.request"
RELEASE = "bastion.release"

# Every attribute a gateway span may carry, with the one type it holds.
ATTRIBUTES: dict[str, type] = {
    "bastion.dataset": str,  # declared by the catalog (spec.name)
    "bastion.action": str,  # read, search, export
    "bastion.decision": str,  # allow, deny
    "bastion.error": str,  # a stable error kind, e.g. "bulk-threshold"
    "bastion.fields": int,  # how many fields the plan releases
    "bastion.records": int,  # how many records are released
    "bastion.missing": int,  # how many requested records are absent or kept back
    "bastion.values": int,  # how many values were opened or shaped
    "bastion.ledger.entries": int,
    "bastion.ledger.index": int,  # the first entry's index (public)
    "http.route": str,  # the route template, never the path
    "http.request.method": str,
    "http.response.status_code": int,
}
_SHORT = {
    "route": "http.route",
    "method": "http.request.method",
    "status": "http.response.status_code",
}


def attributes(span: Span, **values: str | int) -> None:
    """Set attributes named by their short key (``ledger_index`` for
    ``bastion.ledger.index``, ``status`` for the HTTP status); a key outside
    :data:`ATTRIBUTES`, or a value of another type, is a programming error, refused before
    anything is set."""
    named = {_full_name(key): value for key, value in values.items()}
    for name, value in named.items():
        kind = ATTRIBUTES.get(name)
        if kind is None or type(value) is not kind:
            raise ValueError(f"span attribute {name!r} is not one a gateway span may carry")
    if span.is_recording():
        span.set_attributes(named)


def annotate(**values: str | int) -> None:
    """:func:`attributes` on the current span."""
    attributes(trace.get_current_span(), **values)


def _full_name(key: str) -> str:
    return _SHORT.get(key) or "bastion." + key.replace("ledger_", "ledger.")


def stage(name: str) -> str:
    return f"{RELEASE}.{name}"


def _tracing_on() -> bool:
    """Whether a real tracer provider is set. Without one (no SDK, the default) a span is
    skipped outright: the API's no-op path still costs a context switch per span, about a
    tenth of a millisecond on a single read's sixteen spans."""
    current = tracer
    if isinstance(current, trace.ProxyTracer):  # follows the global provider, once one is set
        provider = trace.get_tracer_provider()
        return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    return not isinstance(current, trace.NoOpTracer)


# What ``span`` gives when tracing is off: reusable, and no generator per span.
_NO_SPAN: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)


def span(name: str) -> AbstractContextManager[Span]:
    """A span, current while the block runs. An exception ends it with an error status,
    the HTTP status and the error kind it maps to, and nothing else."""
    return _recording_span(name) if _tracing_on() else _NO_SPAN


@contextmanager
def _recording_span(name: str) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if current.is_recording():
                status, kind = _refusal(exc)
                failed(current, status, kind)
            raise


def _refusal(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.kind
    if isinstance(exc, BastionError):
        return status_for(exc)
    return 500, "internal"


def failed(span: Span, status: int, kind: str) -> None:
    """Mark a span refused: the HTTP status and the stable error kind only."""
    attributes(span, status=status, error=kind)
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, kind))


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    """The request's method if it is a standard one: any other is a token the caller typed."""
    method = scope.get("method")
    return method if method in _METHODS else "other"


class TracingMiddleware:
    """Pure ASGI middleware: one ``bastion.request`` span per HTTP request, the parent of
    the stage spans, with the route *template*, the method and the status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracer.start_as_current_span(
            REQUEST, record_exception=False, set_status_on_exception=False
        ) as current:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                if current.is_recording():
                    route: Any = getattr(scope.get("route"), "path", None)
                    attributes(
                        current,
                        route=route if isinstance(route, str) else "<unmatched>",
                        method=_method(scope),
                        status=status,
                    )
                    if status >= 400:
                        current.set_status(Status(StatusCode.ERROR))
