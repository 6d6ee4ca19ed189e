"""A database partition, injected for real: a TCP path to PostgreSQL that freezes (stops
forwarding both ways, keeps every socket open), not one that closes.

(a) a request through the frozen path answers 503 within the configured bound, not never;
(b) the partitioned gateway's backend, frozen in the middle of a ledger commit while holding
    the sequencer's lock and the state row's lock, does not stall a healthy gateway on the
    same database: the server ends the silent session (idle_in_transaction_session_timeout),
    the locks go, and the healthy gateway's appends complete while the path is still frozen.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, bootstrap, ingest, sample_user
from bastion.errors import LedgerUnavailable
from bastion.events import Actor, RequestRejected
from bastion.gateway.app import create_app
from bastion.gateway.client import Context, GatewayClient, GatewayError
from bastion.gateway.server import ThreadedServer
from bastion.home import Bounds
from bastion.ledger.log import initialize_log, open_log
from bastion.store import Database, open_database
from freezing_proxy import FreezingProxy

from .conftest import register_ticket

# Short bounds so the test takes seconds. statement_timeout above lock_timeout above
# idle_in_transaction: a healthy writer's lock wait outlasts the partitioned session.
BOUNDS = Bounds(
    connect_timeout_s=2,
    statement_timeout_s=4,
    lock_timeout_s=3,
    idle_in_transaction_s=1.5,
    network_grace_s=0.5,
    commit_wait_s=6,
)
SUPPORT = Context(purpose="customer support", ticket="SUP-1")  # registered: names u00001

UrlFactory = Callable[[], tuple[str, str | None]]


@pytest.fixture
def backend() -> str:
    return "postgresql"  # a TCP path to a database server is what partitions


@pytest.fixture
def proxy() -> Iterator[FreezingProxy]:
    with FreezingProxy("127.0.0.1", 5432) as p:
        yield p
        p.thaw()


def _proxied(proxy: FreezingProxy, url: str, name: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{proxy.url(url)}{sep}application_name={name}"


def _event(n: int) -> RequestRejected:
    return RequestRejected(
        actor=Actor(id="partition-test"),
        at="2026-01-01T00:00:00.000000Z",
        request_id=f"req-{n}",
        endpoint="/test",
        status=400,
        error="test",
        reason="an entry appended by the partition test",
    )


@pytest.mark.timeout(120)
def test_a_request_through_a_frozen_path_answers_503(
    db_url_factory: UrlFactory, proxy: FreezingProxy, tmp_path: Path
) -> None:
    url, schema = db_url_factory()
    clock = FixedClock()
    db = open_database(_proxied(proxy, url, "bastion-frozen"), schema=schema, bounds=BOUNDS)
    home = init_home(tmp_path / "home")
    rt = bootstrap(home, db, clock, publish_interval=0.05)
    try:
        ingest(rt, "users", [sample_user(n) for n in range(1, 6)])
        register_ticket(rt, "SUP-1", ["u00001"])
        with ThreadedServer(create_app(rt)) as server:
            token = rt.issuer.issue("alice", PRINCIPALS["alice"], ttl=timedelta(hours=1))
            with GatewayClient(server.url, token=token, timeout=90) as alice:
                out = alice.read("users", "u00001", fields=["email"], context=SUPPORT)
                assert out.records[0].values == {"email": "person1@example.com"}
                proxy.freeze()
                started = time.monotonic()
                with pytest.raises(GatewayError) as err:
                    alice.read("users", "u00002", fields=["email"], context=SUPPORT)
                waited = time.monotonic() - started
                assert err.value.status == 503
                assert err.value.kind in ("store-unavailable", "ledger-unavailable")
                # It answered at all (before the fix it never did); the figure is reported.
                print(f"503 {err.value.kind} after {waited:.1f}s (bound {BOUNDS.request_s}s)")
                proxy.thaw()
                # The path is back: the same gateway serves again, no restart.
                out = alice.read("users", "u00001", fields=["email"], context=SUPPORT)
                assert out.records[0].values == {"email": "person1@example.com"}
    finally:
        proxy.thaw()
        rt.close()
        db.close()


def _idle_in_transaction(direct: Database, name: str) -> int:
    """How many of the partitioned gateway's sessions sit in an open transaction, silent."""
    rows = direct.query(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ? "
        "AND state = 'idle in transaction'",
        (name,),
    )
    return int(rows[0][0])


@pytest.mark.timeout(120)
def test_a_frozen_commit_does_not_stall_another_gateway(
    db_url_factory: UrlFactory, proxy: FreezingProxy, tmp_path: Path
) -> None:
    url, schema = db_url_factory()
    clock = FixedClock()
    home = init_home(tmp_path / "home")
    direct = open_database(url, schema=schema, bounds=BOUNDS)
    initialize_log(direct, home.keyring_dir, home.settings.log_origin, clock)
    name = f"bastion-partitioned-{uuid.uuid4().hex[:8]}"
    frozen_db = open_database(_proxied(proxy, url, name), schema=schema, bounds=BOUNDS)
    healthy = open_log(home, direct, clock, background=False)
    partitioned = open_log(home, frozen_db, clock, background=False)
    try:
        healthy.append(_event(0))
        # The partitioned gateway's first commit reloads the tree under the sequencer's lock
        # and the state row's lock (SELECT ... FOR UPDATE): the path freezes right there.
        proxy.freeze_after(b"FROM ledger_state WHERE id = 1 FOR UPDATE")
        failure: list[BaseException] = []

        def append_partitioned() -> None:
            try:
                partitioned.append(_event(1))
            except BaseException as exc:
                failure.append(exc)

        stuck = threading.Thread(target=append_partitioned, daemon=True)
        stuck.start()
        assert proxy.froze.wait(30)
        # The server side of the frozen commit: inside a transaction, silent, holding the locks
        # (unless the server already ended it: idle_in_transaction_s is short here).
        assert _idle_in_transaction(direct, name) in (0, 1)
        # The healthy gateway keeps appending while the path stays frozen.
        receipts = [healthy.append(_event(10 + i)) for i in range(5)]
        assert [r.index for r in receipts] == list(range(receipts[0].index, receipts[0].index + 5))
        assert proxy.froze.is_set()  # never thawed: the server released the locks by itself
        assert _idle_in_transaction(direct, name) == 0  # the partitioned session was ended
        # The partitioned append failed closed, within its own bound.
        stuck.join(BOUNDS.request_s + 10)
        assert not stuck.is_alive()
        assert failure and isinstance(failure[0], LedgerUnavailable)
        proxy.thaw()
        # Back on the path, the partitioned gateway appends again (fresh connections).
        after = partitioned.append(_event(99))
        assert after.index == receipts[-1].index + 1
        assert healthy.size() == after.index + 1
    finally:
        proxy.thaw()
        partitioned.close()
        healthy.close()
        frozen_db.close()
        direct.close()
