"""Gateway fixtures: a full runtime (vault, log, policy) on each backend, served over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, bootstrap, ingest, sample_event, sample_user
from bastion.gateway.app import create_app
from bastion.gateway.client import GatewayClient
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.policy import PrincipalSpec, TicketSpec
from bastion.policy.registry import PrincipalEntry
from bastion.store import Database

USERS = 20


@pytest.fixture
def runtime(db: Database, tmp_path: Path, clock: FixedClock) -> Iterator[Runtime]:
    home = init_home(tmp_path / "home")
    rt = bootstrap(home, db, clock, publish_interval=0.05)
    ingest(rt, "users", [sample_user(n) for n in range(1, USERS + 1)])
    ingest(rt, "events", [sample_event(n, 1 + n % USERS) for n in range(1, 41)])
    yield rt
    rt.close()


@pytest.fixture
def server(runtime: Runtime) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(runtime)) as srv:
        yield srv


Connect = Callable[..., GatewayClient]


@pytest.fixture
def connect(runtime: Runtime, server: ThreadedServer) -> Iterator[Connect]:
    """``connect("alice")`` -> a client with a fresh token for a named test principal."""
    clients: list[GatewayClient] = []

    def make(
        name: str | None = None,
        *,
        token: str | None = None,
        register: bool = True,
        **over: object,
    ) -> GatewayClient:
        if token is None and name is not None:
            attrs = {**PRINCIPALS.get(name, {}), **over}
            if name not in PRINCIPALS and register:
                # A test that describes a new principal registers it, as an operator would.
                runtime.registry.register(
                    PrincipalEntry(
                        issuer=runtime.issuer.issuer,
                        sub=name,
                        roles=(str(attrs["role"]),),
                        employer=attrs.get("employer"),  # type: ignore[arg-type]
                        employer_country=attrs.get("employer_country"),  # type: ignore[arg-type]
                        max_clearance=str(attrs.get("clearance", "none")),
                    )
                )
            token = runtime.issuer.issue(name, attrs, ttl=timedelta(hours=1))
        client = GatewayClient(server.url, token=token)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


OpenTicket = Callable[..., dict[str, Any]]


@pytest.fixture
def open_ticket(connect: Connect, clock: FixedClock) -> OpenTicket:
    """``open_ticket("SUP-1", ["u00001"])``: the ticketing service (``helpdesk``) registers a
    ticket through the API, as in production; a read naming it may touch only its subjects."""
    helpdesk = connect("helpdesk")

    def make(
        ticket_id: str,
        subjects: Sequence[str],
        *,
        assignees: Sequence[str] = (),
        ttl: timedelta = timedelta(days=1),
    ) -> dict[str, Any]:
        return helpdesk.open_ticket(
            ticket_id, subjects=subjects, assignees=assignees, expires_at=clock.now() + ttl
        ).ticket

    return make


def register_ticket(
    rt: Runtime, ticket_id: str, subjects: Sequence[str], *, ttl: timedelta = timedelta(days=1)
) -> None:
    """The same, through the runtime's service (for tests that hold a runtime, no server)."""
    helpdesk = PrincipalSpec(id="helpdesk", **PRINCIPALS["helpdesk"])
    rt.tickets.open(
        helpdesk,
        TicketSpec(id=ticket_id, subjects=tuple(subjects), expires_at=rt.clock.now() + ttl),
    )


DemoScene = Callable[..., tuple[dict[str, Any], list[bytes]]]


@pytest.fixture
def demo_scene(db: Database, tmp_path: Path) -> DemoScene:
    """``demo_scene(run_demo)`` -> (its report, every log entry): a demo scene run on a fresh
    home with every part initialized, as ``bastion demo`` runs it."""
    import io

    from rich.console import Console

    from bastion.clock import SystemClock
    from bastion.demo.platform import initialize_all
    from bastion.ledger.log import open_log

    def run(scene: Callable[..., dict[str, Any]]) -> tuple[dict[str, Any], list[bytes]]:
        home = init_home(tmp_path / "home")
        clock = SystemClock()
        initialize_all(home, db, clock)
        log = open_log(home, db, clock)
        try:
            report = scene(
                home=home, db=db, ledger=log, clock=clock, console=Console(file=io.StringIO())
            )
            return report, [bytes(log.entry(i)) for i in range(log.size())]
        finally:
            log.close()

    return run
