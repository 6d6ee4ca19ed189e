"""Grants over HTTP: "every subject" is asked for explicitly and needs one more approver, and a
grant allows ``max_uses`` releases in its window, counted atomically across gateways."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS
from bastion.events import AccessDecision, Approval, decode_event
from bastion.gateway.app import create_app
from bastion.gateway.client import Context, GatewayClient, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.store import Database, open_database

from .conftest import Connect, OpenTicket

WHY = Justification(type="customer_initiated_support", detail="user reported account takeover")
CTX = Context(purpose="account takeover investigation", ticket="SUP-70", justification=WHY)
SUBJECTS = ["u00001", "u00002", "u00003"]


@pytest.fixture(autouse=True)
def _ticket(open_ticket: OpenTicket) -> None:
    open_ticket("SUP-70", SUBJECTS)


def _granted(connect: Connect, **request: object) -> tuple[str, dict[str, object]]:
    alice = connect("alice")
    step = alice.request_access(
        "users",
        fields=["location"],
        justification=WHY,
        ticket="SUP-70",
        purpose="investigation",
        **request,  # type: ignore[arg-type]
    )
    rid = step.request["request_id"]
    # A third approver, when one is needed: another cleared security officer.
    sven = dict(PRINCIPALS["sofia"])
    out = None
    for who in ("sofia", "omar", "sven")[: int(step.request["approvers_required"])]:
        approver = connect(who, **sven) if who == "sven" else connect(who)
        out = approver.approve(rid, "agreed")
    assert out is not None and out.grant_id is not None
    return out.grant_id, step.request


def test_every_subject_is_explicit_and_needs_another_approver(
    runtime: Runtime, connect: Connect
) -> None:
    alice = connect("alice")
    # Before: an empty subject list was a request (and, approved, a grant) for everyone.
    with pytest.raises(GatewayError) as err:
        alice.request_access("users", fields=["location"], justification=WHY, ticket="SUP-70")
    assert err.value.status == 422 and "all_subjects" in err.value.message
    assert err.value.receipt is not None

    named_id, named = _granted(connect, subjects=["u00001"])
    every_id, every = _granted(connect, all_subjects=True)
    assert named["approvers_required"] == 2 and every["approvers_required"] == 3
    assert every["all_subjects"] is True and every["subjects"] == []
    steps = [
        decode_event(runtime.ledger.entry(i))
        for i in range(runtime.ledger.size())
        if b'"type":"approval"' in runtime.ledger.entry(i)
    ]
    mine = [e for e in steps if isinstance(e, Approval) and e.request_id == every["request_id"]]
    assert [e.step for e in mine] == ["requested", "approved", "approved", "approved", "granted"]
    assert all(e.all_subjects is True and e.approvers_required == 3 for e in mine)

    ids = SUBJECTS
    one = alice.batch_read(
        "users", ids, fields=["location"], context=CTX.model_copy(update={"grant_id": named_id})
    )
    assert len(one.records) == 1
    every_read = alice.batch_read(
        "users", ids, fields=["location"], context=CTX.model_copy(update={"grant_id": every_id})
    )
    assert len(every_read.records) == 3  # every subject the ticket names


def test_a_grant_is_used_max_uses_times(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    once, _ = _granted(connect, subjects=["u00001"])
    ctx = CTX.model_copy(update={"grant_id": once})
    alice.read("users", "u00001", fields=["location"], context=ctx)
    # Before: a grant could be used any number of times in its window.
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["location"], context=ctx)
    assert err.value.status == 403 and err.value.kind == "grant-exhausted"
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert event.grant_id == once

    twice, request = _granted(connect, subjects=["u00001"], max_uses=2)
    assert request["max_uses"] == 2
    ctx = CTX.model_copy(update={"grant_id": twice})
    # A read that releases nothing (no such record) is not a use.
    assert alice.read("users", "u00099", fields=["location"], context=ctx).records == []
    for _ in range(2):
        alice.read("users", "u00001", fields=["location"], context=ctx)
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["location"], context=ctx)
    assert err.value.kind == "grant-exhausted"


@pytest.fixture
def second_gateway(runtime: Runtime, db: Database, clock: FixedClock) -> Iterator[str]:
    """Another gateway on the same database: its own connections, caches and log writer."""
    path = getattr(db, "path", None)
    other = (
        open_database(f"sqlite:///{path}")
        if path is not None
        else open_database(db.dsn, schema=db.schema)  # type: ignore[attr-defined]
    )
    rt = Runtime.build(runtime.home, other, clock)
    rt.owns_db = True
    try:
        with ThreadedServer(create_app(rt)) as srv:
            yield srv.url
    finally:
        rt.close()


@pytest.mark.timeout(180)
def test_concurrent_uses_beyond_max_uses_are_refused(
    runtime: Runtime, connect: Connect, second_gateway: str
) -> None:
    """Real threads, two gateways on one database, one grant with max_uses 2: exactly two
    reads release, every other is a recorded 403 grant-exhausted."""
    grant_id, _ = _granted(connect, subjects=["u00001"], max_uses=2)
    first = connect("alice")
    token = runtime.issuer.issue("alice", PRINCIPALS["alice"], ttl=timedelta(hours=1))
    clients = [first, GatewayClient(second_gateway, token=token)]
    ctx = CTX.model_copy(update={"grant_id": grant_id})
    threads = 8
    start = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def read(n: int) -> None:
        client = clients[n % 2]
        start.wait()
        try:
            out = client.read("users", "u00001", fields=["location"], context=ctx)
            result = "released" if out.records else "empty"
        except GatewayError as exc:
            result = exc.kind
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=read, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    clients[1].close()
    assert sorted(outcomes) == ["grant-exhausted"] * (threads - 2) + ["released"] * 2
    rows = runtime.db.query(
        "SELECT COUNT(*) FROM access_grant_uses WHERE grant_id = ?", (grant_id,)
    )
    assert int(rows[0][0]) == 2
    released = [
        e
        for i in range(runtime.ledger.size())
        if isinstance(e := decode_event(runtime.ledger.entry(i)), AccessDecision)
        and e.grant_id == grant_id
        and e.decision == "allow"
    ]
    assert len(released) == 2
