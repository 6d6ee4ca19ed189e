"""Registered tickets: the subjects a read under a ticket may touch come from here.

The ``staff-protected-with-purpose-and-ticket`` permit releases protected fields only for the
subjects its ticket names (``@row_filter("ticket_subjects")``). Those subjects used to come
from the reader's own request, so anyone the permit matches could read anyone by naming them.
Now a ticketing service principal (role ``ticketing_service``, registered in the principal
registry; policy decides with the ``open_ticket`` and ``close_ticket`` actions) registers each
ticket with its subjects, optional assignees and an expiry, and the gateway takes the subjects
from the open, registered ticket a read names (``[gateway] tickets = "registered"``, the
default; ``"caller"`` keeps the old behaviour).

Every step is a ``TicketChange`` event appended to the ledger BEFORE the database changes, so
no ticket is in force that the log does not show. The log is public: the ticket's subjects are
recorded as keyed subject refs (the same refs access decisions carry, from the injected
``subject_refs``), never as ids; the ids stay in the database. Ticket ids have a shape that
cannot carry text (``SUP-1042``), so they are in clear.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.clock import Clock, iso, to_unix
from bastion.errors import InputError
from bastion.events import Actor, TicketChange
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.policy.principal import PrincipalAttributes, PrincipalLike
from bastion.policy.rows import columns, select
from bastion.policy.vocabulary import Action
from bastion.policy.workflow import (
    EngineSource,
    StepRefused,
    SubjectRefs,
    checked_refs,
    distinct_values,
)
from bastion.store import Cursor, Database

TICKETS_DDL = [
    """CREATE TABLE IF NOT EXISTS tickets (
        id TEXT PRIMARY KEY,
        subjects TEXT NOT NULL,
        assignees TEXT NOT NULL,
        opened_by TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        expires_unix {int} NOT NULL,
        status TEXT NOT NULL,
        closed_at TEXT,
        closed_by TEXT,
        ledger_index {int} NOT NULL
    )""",
]

_LOCK = "tickets"

# A ticket id: capitals, a dash, digits (the shape the public log keeps in clear).
TICKET_ID = re.compile(r"^[A-Z][A-Z0-9]{1,15}-[0-9]{1,10}$")
PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9_.:@/+#=-]{1,256}$")
# Each subject is one 44-byte ref in the ticket's ledger entry (64 KiB at most).
MAX_TICKET_SUBJECTS = 1_000
MAX_ASSIGNEES = 100

TicketRefusal = Literal[
    "not-permitted",
    "ticket-exists",
    "ticket-unknown",
    "ticket-closed",
    "ticket-expired",
    "ticket-not-assigned",
    "ticket-subjects-mismatch",
]

TicketState = Literal["open", "closed", "expired"]


class TicketRefused(StepRefused[TicketRefusal]):
    """A ticket step was refused, or a read named a ticket it may not use."""


@dataclass(frozen=True)
class TicketConfig:
    # The longest a ticket may stay open (its expiry is at most this far ahead).
    max_duration: timedelta = timedelta(days=30)


class TicketSpec(BaseModel):
    """What a ticketing service registers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=TICKET_ID.pattern)
    subjects: tuple[str, ...] = Field(min_length=1, max_length=MAX_TICKET_SUBJECTS)
    # Principal ids who may read under the ticket; empty: anyone policy lets use a ticket.
    assignees: tuple[str, ...] = Field(default=(), max_length=MAX_ASSIGNEES)
    expires_at: datetime

    @field_validator("subjects", "assignees")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_values(v)

    @field_validator("assignees")
    @classmethod
    def _principal_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not PRINCIPAL_ID.match(a) for a in v):
            raise ValueError("assignees are principal ids (letters, digits, _.:@/+#=-)")
        return v

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a time zone (RFC 3339, e.g. ...Z)")
        try:
            return v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("is out of range") from None


@dataclass(frozen=True)
class TicketRecord:
    id: str
    subjects: tuple[str, ...]
    assignees: tuple[str, ...]
    opened_by: str
    opened_at: str
    expires_at: str
    expires_unix: int
    status: Literal["open", "closed"]
    closed_at: str | None
    closed_by: str | None
    ledger_index: int

    def state(self, now: datetime) -> TicketState:
        if self.status == "closed":
            return "closed"
        return "expired" if to_unix(now) >= self.expires_unix else "open"

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "subjects": list(self.subjects),
            "assignees": list(self.assignees),
            "opened_by": self.opened_by,
            "opened_at": self.opened_at,
            "expires_at": self.expires_at,
            "status": self.state(now),
            "closed_at": self.closed_at,
            "closed_by": self.closed_by,
            "ledger_index": self.ledger_index,
        }


@dataclass(frozen=True)
class TicketOutcome:
    ticket: TicketRecord
    event: TicketChange
    receipt: Receipt


def migrate_tickets(db: Database) -> None:
    db.migrate("tickets", TICKETS_DDL)


@dataclass(frozen=True)
class TicketRow:
    """``tickets`` as stored: its columns, in order (the SELECT list, ``policy/rows.py``)."""

    id: str
    subjects: str  # JSON list of subject ids
    assignees: str  # JSON list of principal ids
    opened_by: str
    opened_at: str
    expires_at: str
    expires_unix: int
    status: str
    closed_at: str | None
    closed_by: str | None
    ledger_index: int

    def record(self) -> TicketRecord:
        return TicketRecord(
            id=str(self.id),
            subjects=tuple(json.loads(self.subjects)),
            assignees=tuple(json.loads(self.assignees)),
            opened_by=str(self.opened_by),
            opened_at=str(self.opened_at),
            expires_at=str(self.expires_at),
            expires_unix=int(self.expires_unix),
            status="closed" if self.status == "closed" else "open",
            closed_at=str(self.closed_at) if self.closed_at is not None else None,
            closed_by=str(self.closed_by) if self.closed_by is not None else None,
            ledger_index=int(self.ledger_index),
        )


class TicketRepository:
    """Reads of ``tickets`` (each its own statement) and ``writing()`` transactions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def writing(self) -> Iterator[TicketWrites]:
        with self.db.transaction(lock=_LOCK) as cur:
            yield TicketWrites(cur)

    def ticket(self, ticket_id: str) -> TicketRow | None:
        rows = select(self.db, TicketRow, "FROM tickets WHERE id = ?", (ticket_id,))
        return rows[0] if rows else None

    def tickets(self, *, limit: int) -> list[TicketRow]:
        return select(
            self.db, TicketRow, "FROM tickets ORDER BY opened_at DESC, id LIMIT ?", (limit,)
        )


class TicketWrites:
    """The writes of one transaction under the tickets lock (``TicketRepository.writing``)."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur

    def insert_open(
        self,
        spec: TicketSpec,
        opened_by: str,
        opened_at: str,
        expires: datetime,
        ledger_index: int,
    ) -> bool:
        """Register an open ticket; False if one with its id exists (a concurrent open won)."""
        self._cur.execute(
            f"INSERT INTO tickets ({columns(TicketRow)}) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', "
            "NULL, NULL, ?) ON CONFLICT (id) DO NOTHING",
            (
                spec.id,
                json.dumps(list(spec.subjects)),
                json.dumps(list(spec.assignees)),
                opened_by,
                opened_at,
                iso(expires),
                to_unix(expires),
                ledger_index,
            ),
        )
        return self._cur.rowcount != 0

    def close(self, ticket_id: str, closed_at: str, closed_by: str) -> None:
        self._cur.execute(
            "UPDATE tickets SET status = 'closed', closed_at = ?, closed_by = ? "
            "WHERE id = ? AND status = 'open'",
            (closed_at, closed_by, ticket_id),
        )


def _system() -> tuple[str, str]:
    return ("System", "bastion")


_SYSTEM_ENTITY = {"uid": {"type": "Bastion::System", "id": "bastion"}, "attrs": {}, "parents": []}


class TicketService:
    """Open, close and resolve registered tickets (each step recorded before it happens)."""

    def __init__(
        self,
        db: Database,
        ledger: LedgerWriter,
        clock: Clock,
        engine: EngineSource,
        *,
        subject_refs: SubjectRefs,
        config: TicketConfig | None = None,
    ) -> None:
        self.db = db
        self.repo = TicketRepository(db)
        self.ledger = ledger
        self.clock = clock
        self._engine = engine
        self._subject_refs = subject_refs
        self.config = config or TicketConfig()

    # ------------------------------------------------------------------ helpers

    def refs(self, subjects: Sequence[str]) -> list[str]:
        """The keyed refs recorded for these subject ids (checked: never an id itself)."""
        return checked_refs(self._subject_refs, subjects)

    def may(self, principal: PrincipalLike, action: Action) -> bool:
        """Whether policy lets ``principal`` open (or close) tickets."""
        decision = self._engine().authorize(
            principal, action, _system(), extra_entities=[_SYSTEM_ENTITY]
        )
        return decision.allowed

    def _attrs(self, who: PrincipalLike) -> PrincipalAttributes:
        return self._engine().attributes(who)

    def _event(
        self,
        actor: Actor,
        step: Literal["opened", "closed", "refused"],
        reason: str,
        ticket_id: str,
        **extra: Any,
    ) -> TicketChange:
        return TicketChange(
            actor=actor,
            reason=reason[:4096],
            at=iso(self.clock.now()),
            ticket=ticket_id,
            step=step,
            **extra,
        )

    def _refuse(
        self,
        kind: TicketRefusal,
        detail: str,
        actor: Actor,
        ticket_id: str,
        subjects: Sequence[str] = (),
    ) -> TicketRefused:
        """Record a refused attempt (it may be an attack) and return the error to raise."""
        event = self._event(
            actor,
            "refused",
            f"{kind}: {detail}",
            ticket_id,
            subject_refs=self.refs(subjects) or None,
            alert=kind == "not-permitted" or None,
        )
        receipt = self.ledger.append(event)
        return TicketRefused(kind, detail, receipt=receipt)

    # ------------------------------------------------------------------ reading

    def get(self, ticket_id: str) -> TicketRecord | None:
        row = self.repo.ticket(ticket_id)
        return row.record() if row else None

    def list(self, *, limit: int = 100) -> list[TicketRecord]:
        return [row.record() for row in self.repo.tickets(limit=limit)]

    def resolve(
        self, ticket_id: str, reader_id: str, asked: Sequence[str] = ()
    ) -> tuple[TicketRecord, tuple[str, ...]]:
        """The open ticket a read names, and the subjects the read may touch under it.

        The subjects come from the ticket. A reader may narrow them (``asked``, the subjects
        its request names); naming one the ticket does not is refused. Raises TicketRefused:
        ``ticket-unknown``, ``ticket-closed``, ``ticket-expired``, ``ticket-not-assigned``
        (the ticket has assignees and the reader is not one), ``ticket-subjects-mismatch``.
        Records nothing: the read's own decision records the refusal."""
        rec = self.get(ticket_id)
        if rec is None:
            raise TicketRefused("ticket-unknown", f"no registered ticket {ticket_id!r}")
        state = rec.state(self.clock.now())
        if state == "closed":
            raise TicketRefused("ticket-closed", f"ticket {ticket_id!r} is closed")
        if state == "expired":
            raise TicketRefused(
                "ticket-expired", f"ticket {ticket_id!r} expired at {rec.expires_at}"
            )
        if rec.assignees and reader_id not in rec.assignees:
            raise TicketRefused(
                "ticket-not-assigned", f"ticket {ticket_id!r} is assigned to someone else"
            )
        if not asked:
            return rec, rec.subjects
        named = set(rec.subjects)
        if any(s not in named for s in asked):
            raise TicketRefused(
                "ticket-subjects-mismatch",
                f"the request names subjects ticket {ticket_id!r} does not",
            )
        return rec, tuple(dict.fromkeys(asked))

    # ------------------------------------------------------------------ steps

    def open(self, principal: PrincipalLike, spec: TicketSpec) -> TicketOutcome:
        """Register a ticket naming its subjects; policy decides who may (``open_ticket``)."""
        attrs = self._attrs(principal)
        actor = attrs.actor()
        if not self.may(principal, Action.OPEN_TICKET):
            raise self._refuse(
                "not-permitted",
                "policy does not allow this principal to open tickets",
                actor,
                spec.id,
                spec.subjects,
            )
        now = self.clock.now()
        if spec.expires_at <= now:
            raise InputError("a ticket must expire in the future", field="expires_at")
        if spec.expires_at > now + self.config.max_duration:
            raise InputError(
                f"a ticket stays open at most {self.config.max_duration}", field="expires_at"
            )
        if self.get(spec.id) is not None:
            raise self._refuse(
                "ticket-exists", f"ticket {spec.id!r} is already registered", actor, spec.id
            )
        expires = spec.expires_at.replace(microsecond=0)
        event = self._event(
            actor,
            "opened",
            "ticket opened",
            spec.id,
            subject_refs=self.refs(spec.subjects),
            assignees=list(spec.assignees) or None,
            expires_at=iso(expires),
        )
        receipt = self.ledger.append(event)  # recorded before the ticket is in force
        with self.repo.writing() as writes:
            inserted = writes.insert_open(spec, attrs.id, event.at, expires, receipt.index)
        if not inserted:  # a concurrent open of the same id won
            raise TicketRefused("ticket-exists", f"ticket {spec.id!r} is already registered")
        rec = self.get(spec.id)
        assert rec is not None
        return TicketOutcome(rec, event, receipt)

    def close(self, ticket_id: str, principal: PrincipalLike) -> TicketOutcome:
        """Close a ticket: no read names it any more (``close_ticket``)."""
        attrs = self._attrs(principal)
        actor = attrs.actor()
        if not self.may(principal, Action.CLOSE_TICKET):
            raise self._refuse(
                "not-permitted",
                "policy does not allow this principal to close tickets",
                actor,
                ticket_id,
            )
        rec = self.get(ticket_id)
        if rec is None:
            raise self._refuse(
                "ticket-unknown", f"no registered ticket {ticket_id!r}", actor, ticket_id
            )
        if rec.status == "closed":
            raise self._refuse(
                "ticket-closed", f"ticket {ticket_id!r} is already closed", actor, ticket_id
            )
        event = self._event(
            actor, "closed", "ticket closed", ticket_id, subject_refs=self.refs(rec.subjects)
        )
        receipt = self.ledger.append(event)  # recorded before the ticket closes
        with self.repo.writing() as writes:
            writes.close(ticket_id, event.at, attrs.id)
        closed = self.get(ticket_id)
        assert closed is not None
        return TicketOutcome(closed, event, receipt)


__all__ = [
    "MAX_TICKET_SUBJECTS",
    "TICKET_ID",
    "TicketConfig",
    "TicketOutcome",
    "TicketRecord",
    "TicketRefused",
    "TicketRepository",
    "TicketRow",
    "TicketService",
    "TicketSpec",
    "migrate_tickets",
]
