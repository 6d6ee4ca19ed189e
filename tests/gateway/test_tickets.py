"""Registered tickets over HTTP: a read under a ticket touches the subjects of the open ticket
a ticketing service registered, never the subjects the reader names; an unknown, closed,
expired or someone else's ticket is a recorded 403. ``[gateway] tickets = "caller"`` keeps
the old behaviour."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.clock import FixedClock
from bastion.errors import ConfigError
from bastion.events import AccessDecision, TicketChange, decode_event
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.config import gateway_config
from bastion.gateway.runtime import Runtime
from bastion.home import settings_from

from .conftest import Connect, OpenTicket

PURPOSE = "customer support"


def _event(rt: Runtime, index: int) -> object:
    return decode_event(rt.ledger.entry(index))


def _denied(rt: Runtime, call: object) -> GatewayError:
    with pytest.raises(GatewayError) as err:
        call()  # type: ignore[operator]
    assert err.value.receipt is not None
    event = _event(rt, err.value.receipt.index)
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert not event.released_records
    return err.value


def test_naming_subjects_without_a_registered_ticket_reads_nothing(
    runtime: Runtime, connect: Connect
) -> None:
    # Before: any staff member with MFA read anyone by naming them with any ticket.
    alice = connect("alice")
    ctx = Context(purpose=PURPOSE, ticket="SUP-404", ticket_subjects=["u00003"])
    err = _denied(runtime, lambda: alice.read("users", "u00003", fields=["email"], context=ctx))
    assert err.status == 403 and err.kind == "ticket-unknown"
    assert "SUP-404" in err.message
    # A field no ticket is needed for is not refused because of it.
    out = alice.read("users", "u00003", fields=["country"], context=ctx)
    assert out.records[0].values == {"country": "US"}
    # Something that is no ticket id (a name) reaches the public log only as a commitment,
    # in the refusal's reason too.
    named = Context(purpose=PURPOSE, ticket="Jane_Doe")
    err = _denied(runtime, lambda: alice.read("users", "u00003", fields=["email"], context=named))
    assert err.kind == "ticket-unknown" and "hmac-sha256:" in err.message
    assert b"Jane_Doe" not in runtime.ledger.entry(err.receipt.index)  # type: ignore[union-attr]


def test_the_subjects_come_from_the_ticket(
    runtime: Runtime, connect: Connect, open_ticket: OpenTicket
) -> None:
    opened = open_ticket("SUP-1", ["u00001", "u00002"])
    assert opened["status"] == "open" and opened["subjects"] == ["u00001", "u00002"]
    alice = connect("alice")
    ctx = Context(purpose=PURPOSE, ticket="SUP-1")
    out = alice.batch_read("users", ["u00001", "u00002", "u00003"], fields=["email"], context=ctx)
    assert [r.values["email"] for r in out.records] == [
        "person1@example.com",
        "person2@example.com",
    ]
    event = _event(runtime, out.receipt.index)
    assert isinstance(event, AccessDecision) and event.ticket == "SUP-1"
    assert event.row_filter == "ticket_subjects" and len(event.released_records or []) == 2
    # The reader may narrow the ticket's subjects, never widen them.
    narrowed = ctx.model_copy(update={"ticket_subjects": ["u00002"]})
    out = alice.batch_read("users", ["u00001", "u00002"], fields=["email"], context=narrowed)
    assert [r.values["email"] for r in out.records] == ["person2@example.com"]
    widened = ctx.model_copy(update={"ticket_subjects": ["u00002", "u00003"]})
    err = _denied(runtime, lambda: alice.read("users", "u00003", fields=["email"], context=widened))
    assert err.status == 403 and err.kind == "ticket-subjects-mismatch"


def test_closed_expired_and_unassigned_tickets_are_refused(
    runtime: Runtime, connect: Connect, open_ticket: OpenTicket, clock: FixedClock
) -> None:
    alice, helpdesk = connect("alice"), connect("helpdesk")
    open_ticket("SUP-2", ["u00002"])
    ctx = Context(purpose=PURPOSE, ticket="SUP-2")
    assert alice.read("users", "u00002", fields=["email"], context=ctx).records
    closed = helpdesk.close_ticket("SUP-2")
    assert closed.step == "closed" and closed.ticket["status"] == "closed"
    event = _event(runtime, closed.receipt.index)
    assert isinstance(event, TicketChange) and event.step == "closed"
    err = _denied(runtime, lambda: alice.read("users", "u00002", fields=["email"], context=ctx))
    assert err.kind == "ticket-closed"

    open_ticket("SUP-3", ["u00003"], assignees=["mod"])
    err = _denied(
        runtime,
        lambda: alice.read(
            "users", "u00003", fields=["email"], context=Context(purpose=PURPOSE, ticket="SUP-3")
        ),
    )
    assert err.kind == "ticket-not-assigned"

    open_ticket("SUP-4", ["u00004"], ttl=timedelta(hours=1))
    clock.advance(timedelta(hours=1))
    alice = connect("alice")
    err = _denied(
        runtime,
        lambda: alice.read(
            "users", "u00004", fields=["email"], context=Context(purpose=PURPOSE, ticket="SUP-4")
        ),
    )
    assert err.kind == "ticket-expired"


def test_only_ticketing_services_open_and_see_tickets(
    runtime: Runtime, connect: Connect, open_ticket: OpenTicket, clock: FixedClock
) -> None:
    alice, helpdesk, audra = connect("alice"), connect("helpdesk"), connect("audra")
    with pytest.raises(GatewayError) as err:
        alice.open_ticket("SUP-5", subjects=["u00005"], expires_at=clock.now() + timedelta(days=1))
    assert err.value.status == 403 and err.value.kind == "not-permitted"
    assert err.value.receipt is not None
    refused = _event(runtime, err.value.receipt.index)
    assert isinstance(refused, TicketChange) and refused.step == "refused"
    assert refused.actor.id == "alice" and refused.alert is True

    tomorrow = clock.now() + timedelta(days=1)
    opened = helpdesk.open_ticket(
        "SUP-5", subjects=["u00005"], assignees=["alice"], expires_at=tomorrow
    )
    assert opened.step == "opened"
    entry = runtime.ledger.entry(opened.receipt.index)
    event = decode_event(entry)
    assert isinstance(event, TicketChange) and event.assignees == ["alice"]
    assert event.subject_refs == [runtime.lookup.subject_refs(["u00005"])[0]]
    assert b"u00005" not in entry  # the log is public: a keyed ref, never the id
    with pytest.raises(GatewayError) as err:
        helpdesk.open_ticket("SUP-5", subjects=["u00001"], expires_at=clock.now() + timedelta(1))
    assert err.value.status == 409 and err.value.kind == "ticket-exists"

    assert helpdesk.ticket("SUP-5")["subjects"] == ["u00005"]
    assert audra.ticket("SUP-5")["assignees"] == ["alice"]
    assert alice.ticket("SUP-5")["status"] == "open"  # an assignee
    with pytest.raises(GatewayError) as err:
        connect("mod").ticket("SUP-5")
    assert err.value.status == 404
    with pytest.raises(GatewayError) as err:
        alice.close_ticket("SUP-5")
    assert err.value.status == 403 and err.value.receipt is not None
    with pytest.raises(GatewayError) as err:
        helpdesk.close_ticket("SUP-6")
    assert err.value.status == 404 and err.value.kind == "ticket-unknown"
    with pytest.raises(GatewayError) as err:
        helpdesk.open_ticket(
            "SUP-7", subjects=["u00001"], expires_at=clock.now() + timedelta(days=90)
        )
    assert err.value.status == 422 and err.value.receipt is not None


def test_the_subject_sees_the_ticket_that_names_them(
    runtime: Runtime, connect: Connect, open_ticket: OpenTicket
) -> None:
    open_ticket("SUP-8", ["u00008"])
    me = connect(token=runtime.issuer.issue("u00008", {"role": "subject"}))
    history = me.subject_accesses("u00008")
    steps = [e.event for e in history.entries if e.event["type"] == "ticket"]
    assert [(s["ticket"], s["step"]) for s in steps] == [("SUP-8", "opened")]


def test_approval_requests_opened_by_a_read_name_the_tickets_subjects(
    runtime: Runtime, connect: Connect, open_ticket: OpenTicket
) -> None:
    open_ticket("SUP-9", ["u00009"])
    alice = connect("alice")
    ctx = Context(
        purpose=PURPOSE,
        ticket="SUP-9",
        justification={"type": "customer_initiated_support", "detail": "lost phone, user asked"},
    )
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00009", fields=["location"], context=ctx)
    assert err.value.kind == "approval-required"
    request = runtime.approvals.get(str(err.value.detail["access_request_id"]))
    assert request.subjects == ("u00009",) and not request.all_subjects


def test_the_caller_setting_keeps_the_old_behaviour(runtime: Runtime, connect: Connect) -> None:
    runtime.config = runtime.config.model_copy(update={"tickets": "caller"})
    alice = connect("alice")
    ctx = Context(purpose=PURPOSE, ticket="SUP-404", ticket_subjects=["u00003"])
    out = alice.read("users", "u00003", fields=["email"], context=ctx)
    assert out.records[0].values == {"email": "person3@example.com"}
    assert gateway_config(settings_from({}, {})).tickets == "registered"
    assert gateway_config(settings_from({"gateway": {"tickets": "caller"}}, {})).tickets == "caller"
    with pytest.raises(ConfigError):
        gateway_config(settings_from({"gateway": {"tickets": "trust-me"}}, {}))
