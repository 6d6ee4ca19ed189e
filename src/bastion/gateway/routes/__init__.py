"""The gateway's HTTP routes, one module per area."""

from __future__ import annotations

from fastapi import FastAPI

from bastion.gateway.runtime import Runtime
from bastion.ledger.http import log_router


def register_routes(app: FastAPI, runtime: Runtime) -> None:
    from bastion.gateway.routes import (
        access,
        cleanroom,
        data,
        policy,
        public,
        subjects,
        tickets,
        transparency,
        writes,
    )

    app.include_router(public.router)
    app.include_router(data.router)
    app.include_router(writes.router)
    app.include_router(access.router)
    app.include_router(tickets.router)
    app.include_router(transparency.router)
    app.include_router(policy.router)
    app.include_router(cleanroom.router)
    subjects.install(app, runtime)
    app.include_router(subjects.router)
    app.include_router(log_router(runtime.ledger.reader))
