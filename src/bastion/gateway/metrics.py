"""Prometheus metrics for the gateway.

Labels carry only bounded, non-protected values: route *templates* (``/records/{dataset}/{id}``,
never the id), methods, status codes, actions, decisions, transforms and failure kinds. A
subject id, record id or field value never becomes a label.

Each app gets its own registry so several gateways (tests, the demo) can live in one process.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class GatewayMetrics:
    """The gateway's counters and histograms, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bastion_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "bastion_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "bastion_access_decisions",
            "Access decisions recorded in the ledger, by action and outcome.",
            ["action", "decision"],
            registry=r,
        )
        self.released_values = Counter(
            "bastion_released_field_values",
            "Field values released to callers, by transform.",
            ["transform"],
            registry=r,
        )
        self.ledger_append = Histogram(
            "bastion_ledger_append_seconds",
            "Time to durably record an event before release.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_failures = Counter(
            "bastion_ledger_append_failures",
            "Appends that failed; nothing was released for them.",
            registry=r,
        )
        self.store_failures = Counter(
            "bastion_store_failures",
            "Requests answered 503 because the database failed (down, full, connection lost).",
            registry=r,
        )
        self.auth_failures = Counter(
            "bastion_auth_failures",
            "Refused bearer tokens by failure kind.",
            ["kind"],
            registry=r,
        )
        self.bulk_refusals = Counter(
            "bastion_bulk_threshold_refusals",
            "Requests refused because they would cross a 28 CFR 202.205 bulk threshold.",
            ["category"],
            registry=r,
        )
        self.input_errors = Counter(
            "bastion_input_errors",
            "Requests refused for bad input, by kind.",
            ["kind"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times each request by its route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)
            self.metrics.requests.labels(route, scope.get("method", "?"), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The matched route's template (``/datasets/{dataset}/read``), for labels and logs."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    raw = str(scope.get("path", ""))
    # Unmatched paths (404s) and mounted sub-apps collapse to a fixed label: a raw path may
    # carry an identifier, and an attacker must not be able to grow the label set.
    if raw.startswith("/log/"):
        return "/log/*"
    return "<unmatched>"
