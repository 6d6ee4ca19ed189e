"""Approvals through the gateway: requests, N distinct approvers, grants that expire, revocation,
break-glass with its review, and the refusals (self-approval, non-approvers, replays)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.clock import FixedClock
from bastion.events import AccessDecision, Approval, decode_event
from bastion.gateway.client import Context, GatewayError, Justification
from bastion.gateway.runtime import Runtime

from .conftest import Connect, OpenTicket

WHY = Justification(type="customer_initiated_support", detail="user reported account takeover")
# A ticket the ticketing service registers (below): its subject comes from the ticket.
TICKET = Context(purpose="account takeover investigation", ticket="SUP-77", justification=WHY)


@pytest.fixture(autouse=True)
def _ticket(open_ticket: OpenTicket) -> None:
    open_ticket("SUP-77", ["u00001"])


def _event(rt: Runtime, index: int) -> object:
    return decode_event(rt.ledger.entry(index))


def test_two_person_approval_grant_then_expiry(
    runtime: Runtime, connect: Connect, clock: FixedClock
) -> None:
    alice, sofia, omar = connect("alice"), connect("sofia"), connect("omar")
    # Precise location needs two approvers: the read opens an access request itself.
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["location"], context=TICKET)
    assert err.value.status == 403 and err.value.kind == "approval-required"
    request_id = err.value.detail["access_request_id"]
    assert err.value.detail["approval"]["approvers"] == 2
    pending = sofia.access_requests(scope="to-approve", status="pending")
    assert [r["request_id"] for r in pending] == [request_id]
    req = sofia.access_request(request_id)
    assert req["requester"]["employer"] == "custodian" and req["approvers_required"] == 2

    first = sofia.approve(request_id, "ticket checked")
    assert first.step == "approved" and first.grant is None
    second = omar.approve(request_id, "agree")
    assert second.step == "granted" and second.grant_id is not None
    assert second.grant is not None and second.grant["token"] is None  # not the approver's
    grant_id = second.grant_id
    assert isinstance(_event(runtime, second.receipt.index), Approval)

    ctx = TICKET.model_copy(update={"grant_id": grant_id})
    out = alice.read("users", "u00001", fields=["location"], context=ctx)
    assert out.records[0].values["location"] is not None and out.grant_id == grant_id
    event = _event(runtime, out.receipt.index)
    assert isinstance(event, AccessDecision)
    assert event.grant_id == grant_id and grant_id in event.approval_ids

    # Replaying the same request id with the grant is refused and recorded.
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["location"], context=ctx, request_id=out.request_id)
    assert err.value.status == 409 and err.value.kind == "grant-replayed"
    assert err.value.receipt is not None

    # The grant is time-boxed (default 8 h): after expiry the same use is refused.
    clock.advance(timedelta(hours=9))
    alice = connect("alice")  # a fresh token: the old one expired too
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["location"], context=ctx)
    assert err.value.status == 403 and err.value.kind == "grant-expired"
    denied = _event(runtime, err.value.receipt.index)  # type: ignore[union-attr]
    assert isinstance(denied, AccessDecision) and denied.decision == "deny"
    swept = runtime.approvals.expire_due()
    assert any(e.step == "expired" and e.grant_id == grant_id for e in swept)


def test_self_approval_and_non_approver_are_refused_and_recorded(
    runtime: Runtime, connect: Connect
) -> None:
    alice, kenji, sofia = connect("alice"), connect("kenji"), connect("sofia")
    step = alice.request_access(
        "users",
        fields=["location"],
        subjects=["u00001"],
        justification=WHY,
        ticket="SUP-77",
        purpose="investigation",
    )
    rid = step.request["request_id"]
    with pytest.raises(GatewayError) as err:
        alice.approve(rid, "I trust me")
    assert err.value.status == 403 and err.value.kind == "self-approval"
    refused = _event(runtime, err.value.receipt.index)  # type: ignore[union-attr]
    assert isinstance(refused, Approval) and refused.step == "refused"
    with pytest.raises(GatewayError) as err:
        kenji.approve(rid, "looks fine")
    assert err.value.status == 403 and err.value.kind == "not-an-approver"
    assert err.value.receipt is not None
    sofia.approve(rid, "ok")
    with pytest.raises(GatewayError) as err:
        sofia.approve(rid, "again")
    assert err.value.status == 409 and err.value.kind == "duplicate-approval"
    # Others cannot even see the request.
    with pytest.raises(GatewayError) as err:
        kenji.access_request(rid)
    assert err.value.status == 404


def test_revoked_grant_is_refused(runtime: Runtime, connect: Connect) -> None:
    alice, sofia, omar = connect("alice"), connect("sofia"), connect("omar")
    rid = alice.request_access(
        "users",
        fields=["location"],
        subjects=["u00001"],
        justification=WHY,
        ticket="SUP-77",
        purpose="investigation",
        duration_seconds=600,
    ).request["request_id"]
    sofia.approve(rid, "ok")
    grant_id = omar.approve(rid, "ok").grant_id
    assert grant_id is not None
    sofia.revoke(grant_id, "ticket closed")
    with pytest.raises(GatewayError) as err:
        alice.read(
            "users",
            "u00001",
            fields=["location"],
            context=TICKET.model_copy(update={"grant_id": grant_id}),
        )
    assert err.value.kind == "grant-revoked" and err.value.receipt is not None


def test_someone_elses_grant_is_refused(runtime: Runtime, connect: Connect) -> None:
    alice, sofia, omar = connect("alice"), connect("sofia"), connect("omar")
    rid = alice.request_access(
        "users",
        fields=["location"],
        subjects=["u00001"],
        justification=WHY,
        ticket="SUP-77",
        purpose="investigation",
    ).request["request_id"]
    sofia.approve(rid, "ok")
    grant_id = omar.approve(rid, "ok").grant_id
    bob = connect(
        "bob",
        role="engineer",
        employer="custodian",
        employer_country="US",
        location_country="US",
        clearance="confidential",
        amr=["pwd", "mfa"],
    )
    with pytest.raises(GatewayError) as err:
        bob.read(
            "users",
            "u00001",
            fields=["location"],
            context=TICKET.model_copy(update={"grant_id": grant_id}),
        )
    assert err.value.kind == "grant-wrong-principal"


def test_break_glass_then_review(runtime: Runtime, connect: Connect) -> None:
    alice, sofia = connect("alice"), connect("sofia")
    outage = Justification(type="break_glass", detail="payments outage, user locked out (INC-9)")
    step = alice.break_glass(
        "users",
        fields=["email", "location"],
        subjects=["u00002"],
        justification=outage,
        duration_seconds=900,
    )
    assert step.step == "break-glass" and step.review_id and step.grant is not None
    assert step.grant["token"]  # the holder gets the signed grant itself
    ctx = Context(
        purpose="incident INC-9",
        justification=outage,
        ticket_subjects=["u00002"],
        grant_token=step.grant["token"],
    )
    out = alice.read("users", "u00002", fields=["email", "location"], context=ctx)
    assert out.records[0].values["email"] == "person2@example.com"
    event = _event(runtime, out.receipt.index)
    assert isinstance(event, AccessDecision) and event.break_glass is True
    # Only the subjects named when breaking the glass.
    other = alice.read("users", "u00003", fields=["email"], context=ctx)
    assert other.records == []
    pending = sofia.reviews(status="pending")
    assert [r["id"] for r in pending] == [step.review_id]
    with pytest.raises(GatewayError) as err:
        alice.review(step.review_id, "justified", "it was me, it was fine")  # type: ignore[arg-type]
    assert err.value.kind == "self-review"
    done = sofia.review(step.review_id, "justified", "INC-9 confirmed")  # type: ignore[arg-type]
    assert done.step == "reviewed"
    assert sofia.reviews(status="pending") == []


def test_break_glass_refused_below_clearance_2_even_with_a_ticket(
    runtime: Runtime, connect: Connect
) -> None:
    # The review's finding: an internal-clearance engineer got 201 from POST /break-glass for
    # location (the ticket permit matched once the flag lifted the forbid) and then read it.
    junior = connect("alice", clearance="internal")
    outage = Justification(type="break_glass", detail="payments outage, user locked out (INC-9)")
    with pytest.raises(GatewayError) as err:
        junior.break_glass(
            "users",
            fields=["location"],
            subjects=["u00002"],
            justification=outage,
            purpose="incident INC-9",
            ticket="INC-9",
        )
    assert err.value.status == 403 and err.value.receipt is not None
    with pytest.raises(GatewayError) as read_err:
        junior.read("users", "u00002", fields=["location"], context=TICKET)
    assert read_err.value.status == 403


def test_break_glass_needs_a_real_justification(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    with pytest.raises(GatewayError) as err:
        alice.break_glass(
            "users",
            fields=["email"],
            subjects=["u00002"],
            justification=Justification(type="service_operation", detail="just because, ok"),
        )
    assert err.value.status == 422 and err.value.receipt is not None
