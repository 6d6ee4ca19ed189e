"""Registered tickets on both backends: only ticketing services open and close them (Cedar),
each step is in the ledger first with keyed subject refs, and a read's ticket resolves to the
ticket's subjects, never to the reader's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.clock import FixedClock
from bastion.errors import InputError
from bastion.events import TicketChange, encode_event
from bastion.ledger.log import Log
from bastion.policy import (
    Action,
    PolicyRuntime,
    TicketRefused,
    TicketService,
    TicketSpec,
)
from bastion.store import Database

from .conftest import PEOPLE, fake_subject_refs, make, recorded

HELPDESK = make("helpdesk", "ticketing_service", clearance="none", amr=("pwd",))


@pytest.fixture
def tickets(
    policy_db: Database, ledger: Log, clock: FixedClock, runtime: PolicyRuntime
) -> TicketService:
    return TicketService(policy_db, ledger, clock, runtime.engine, subject_refs=fake_subject_refs)


def spec(clock: FixedClock, ticket: str = "SUP-1", **kw: object) -> TicketSpec:
    base: dict[str, object] = {
        "id": ticket,
        "subjects": ("u1", "u2"),
        "expires_at": clock.now() + timedelta(days=1),
    }
    base.update(kw)
    return TicketSpec.model_validate(base)


def last(ledger: Log) -> TicketChange:
    event = recorded(ledger)[-1]
    assert isinstance(event, TicketChange)
    return event


def test_a_ticketing_service_opens_a_ticket_recorded_first(
    tickets: TicketService, ledger: Log, clock: FixedClock
) -> None:
    size = ledger.size()
    out = tickets.open(HELPDESK, spec(clock))
    assert out.ticket.subjects == ("u1", "u2") and out.ticket.state(clock.now()) == "open"
    event = last(ledger)
    assert ledger.size() == size + 1 and out.ticket.ledger_index == out.receipt.index
    assert event.step == "opened" and event.ticket == "SUP-1"
    assert event.actor.id == "helpdesk" and event.actor.role == "ticketing_service"
    # The log is public: subjects as keyed refs, never the ids.
    assert event.subject_refs == fake_subject_refs(["u1", "u2"])
    assert b"u1" not in encode_event(event) and b"u2" not in encode_event(event)


@pytest.mark.parametrize("who", ["staff", "officer1", "policy_admin", "auditor", "subject"])
def test_only_ticketing_services_open_tickets(
    tickets: TicketService, ledger: Log, clock: FixedClock, who: str
) -> None:
    with pytest.raises(TicketRefused) as err:
        tickets.open(PEOPLE[who], spec(clock))
    assert err.value.kind == "not-permitted" and err.value.receipt is not None
    refused = last(ledger)
    assert refused.step == "refused" and refused.alert is True
    assert tickets.get("SUP-1") is None


def test_a_covered_ticketing_service_is_refused(tickets: TicketService, clock: FixedClock) -> None:
    abroad = make("tix-cn", "ticketing_service", employer_country="CN", location_country="CN")
    assert not tickets.may(abroad, Action.OPEN_TICKET)
    with pytest.raises(TicketRefused) as err:
        tickets.open(abroad, spec(clock))
    assert err.value.kind == "not-permitted"


def test_open_input_and_duplicates(tickets: TicketService, clock: FixedClock) -> None:
    with pytest.raises(InputError, match="future"):
        tickets.open(HELPDESK, spec(clock, expires_at=clock.now() - timedelta(seconds=1)))
    with pytest.raises(InputError, match="at most"):
        tickets.open(HELPDESK, spec(clock, expires_at=clock.now() + timedelta(days=31)))
    for bad in ({"id": "jane.doe@example.com"}, {"subjects": ()}, {"subjects": ("u1", "u1")}):
        with pytest.raises(ValueError):
            spec(clock, **bad)  # type: ignore[arg-type]
    tickets.open(HELPDESK, spec(clock))
    with pytest.raises(TicketRefused) as err:
        tickets.open(HELPDESK, spec(clock, subjects=("u9",)))
    assert err.value.kind == "ticket-exists"
    assert tickets.get("SUP-1").subjects == ("u1", "u2")  # type: ignore[union-attr]


def test_resolve_takes_subjects_from_the_ticket(tickets: TicketService, clock: FixedClock) -> None:
    tickets.open(HELPDESK, spec(clock))
    _, subjects = tickets.resolve("SUP-1", "alice")
    assert subjects == ("u1", "u2")
    _, narrowed = tickets.resolve("SUP-1", "alice", ["u2"])
    assert narrowed == ("u2",)
    for ticket, asked, kind in (
        ("SUP-1", ["u3"], "ticket-subjects-mismatch"),
        ("SUP-1", ["u1", "u3"], "ticket-subjects-mismatch"),
        ("SUP-404", [], "ticket-unknown"),
    ):
        with pytest.raises(TicketRefused) as err:
            tickets.resolve(ticket, "alice", asked)
        assert err.value.kind == kind


def test_assignees_closing_and_expiry(
    tickets: TicketService, ledger: Log, clock: FixedClock
) -> None:
    tickets.open(HELPDESK, spec(clock, assignees=("alice",)))
    tickets.resolve("SUP-1", "alice")
    with pytest.raises(TicketRefused) as err:
        tickets.resolve("SUP-1", "bob")
    assert err.value.kind == "ticket-not-assigned"
    with pytest.raises(TicketRefused) as err:
        tickets.close("SUP-1", PEOPLE["staff"])
    assert err.value.kind == "not-permitted"
    out = tickets.close("SUP-1", HELPDESK)
    assert out.event.step == "closed" and last(ledger).subject_refs == fake_subject_refs(
        ["u1", "u2"]
    )
    assert out.ticket.state(clock.now()) == "closed" and out.ticket.closed_by == "helpdesk"
    with pytest.raises(TicketRefused) as err:
        tickets.resolve("SUP-1", "alice")
    assert err.value.kind == "ticket-closed"
    with pytest.raises(TicketRefused) as err:
        tickets.close("SUP-1", HELPDESK)
    assert err.value.kind == "ticket-closed"

    tickets.open(HELPDESK, spec(clock, "SUP-2", expires_at=clock.now() + timedelta(hours=1)))
    clock.advance(timedelta(hours=1))
    with pytest.raises(TicketRefused) as err:
        tickets.resolve("SUP-2", "alice")
    assert err.value.kind == "ticket-expired"
