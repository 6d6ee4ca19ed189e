"""Access requests, N-person approvals, signed grants, revocation and break-glass.

Modelled on Google Access Approval: a request names who asks (with employer and location),
what (dataset, action, fields, subjects), why (a justification type and detail) and for how
long. Policy says how many distinct approvers it needs; the requester never approves their
own request, and every approver must be allowed the Cedar ``approve`` action. The last
approval issues a grant: signed (Ed25519), bound to the SHA-256 of the request's canonical
JSON, time-boxed by the injected clock, revocable, and refused when replayed.

Break-glass gives immediate, short access with a mandatory justification; it raises an alert
and opens a review that someone else must close.

Every step appends an ``Approval`` event to the ledger BEFORE the database changes, so the
ledger always knows at least every approval and grant in force. A crash between the two
leaves an event whose effect never happened (the step can be retried); never the reverse.

The ledger is a public log, so its events never carry a raw subject id: the subjects a
request names are recorded as keyed refs (``subject_refs``, the same refs access decisions
carry), computed by a function the caller injects (the gateway's comes from the vault), and a
data subject acting as a principal appears under their ref too. The request itself, with the
raw ids the grant covers, stays in the database.

Text a principal types is free text that can name anyone, so it goes through the injected
``PublicText`` (``policy/freetext.py``); per field of the ``Approval`` event:

* ``reason`` of "requested" and "break-glass": the justification detail; of "approved",
  "denied" and "revoked": the approver's, denier's or revoker's reason; of "reviewed": the
  outcome word in clear (``justified`` / ``unjustified``) and the review notes. By default the
  typed part is a keyed commitment (``"approved; text hmac-sha256:…"``), the text staying in
  the database (``free_texts``, and the request, approval and review rows);
  ``free_text = "publish"`` writes it as before.
* ``reason`` of "granted", "expired" and "refused": written by Bastion, not typed: clear.
* ``justification_type``, ``dataset``, ``action``, ``fields``, ``step``, ids: enumerated or
  structured: clear. (``subject_refs`` are keyed refs, above.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.catalog import SensitiveCategory
from bastion.clock import Clock, iso, to_unix
from bastion.errors import ConfigError, InputError, IntegrityError
from bastion.events import Actor, Approval, ApprovalStep
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.policy.engine import ApprovalResource, PolicyEngine
from bastion.policy.freetext import FREE_TEXT_DDL, PublicText
from bastion.policy.grants import (
    GrantClaims,
    GrantRejected,
    key_id,
    request_sha256,
    sign_grant,
    token_sha256,
    verify_grant_token,
)
from bastion.policy.plan import GrantScope, PlanRequest
from bastion.policy.principal import PrincipalAttributes, PrincipalLike
from bastion.policy.refusals import StepRefused, checked_refs
from bastion.policy.vocabulary import FIELD_ACTIONS, MAX_APPROVERS, Action, JustificationType
from bastion.store import Database

APPROVALS_DDL = [
    """CREATE TABLE IF NOT EXISTS access_requests (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        requester_id TEXT NOT NULL,
        canonical TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        dataset TEXT NOT NULL,
        approvers_required {int} NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        lapses_unix {int} NOT NULL,
        decided_at TEXT,
        ledger_index {int} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS access_requests_status ON access_requests (status, lapses_unix)",
    """CREATE TABLE IF NOT EXISTS access_approvals (
        request_id TEXT NOT NULL,
        approver_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        reason TEXT NOT NULL,
        approved_at TEXT NOT NULL,
        ledger_index {int} NOT NULL,
        PRIMARY KEY (request_id, approver_id)
    )""",
    """CREATE TABLE IF NOT EXISTS access_grants (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        token TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        expires_unix {int} NOT NULL,
        revoked_at TEXT,
        revoked_by TEXT,
        expiry_recorded {int} NOT NULL DEFAULT 0,
        ledger_index {int} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS access_grants_request ON access_grants (request_id)",
    "CREATE INDEX IF NOT EXISTS access_grants_expiry "
    "ON access_grants (expiry_recorded, expires_unix)",
    """CREATE TABLE IF NOT EXISTS access_grant_uses (
        grant_id TEXT NOT NULL,
        use_id TEXT NOT NULL,
        used_at TEXT NOT NULL,
        PRIMARY KEY (grant_id, use_id)
    )""",
    """CREATE TABLE IF NOT EXISTS break_glass_reviews (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        due_at TEXT NOT NULL,
        due_unix {int} NOT NULL,
        reviewer_id TEXT,
        reviewed_at TEXT,
        notes TEXT
    )""",
    # Typed text the (public) ledger carries only as a commitment (``policy/freetext.py``).
    *FREE_TEXT_DDL,
]

_LOCK = "access-approvals"

# "granting": the last approval claimed the request and is recording the grant; a crash there
# leaves it so (no grant exists: fail closed) until it lapses.
RequestStatus = Literal["pending", "granting", "granted", "denied", "expired", "break-glass"]
RefusalKind = Literal[
    "unknown-request",
    "not-pending",
    "lapsed",
    "self-approval",
    "not-an-approver",
    "duplicate-approval",
    "denied-by-policy",
    "not-permitted",
    "unknown-grant",
    "not-active",
    "unknown-review",
    "already-reviewed",
    "self-review",
]


class ApprovalRefused(StepRefused[RefusalKind]):
    """A step of the approval workflow was refused (and, where it matters, recorded)."""


@dataclass(frozen=True)
class ApprovalConfig:
    max_duration: timedelta = timedelta(days=7)
    default_duration: timedelta = timedelta(hours=8)
    # A request nobody decided lapses after this long.
    request_ttl: timedelta = timedelta(days=3)
    # Floor on approvers, whatever policy says (policy's @approvers usually sets more).
    min_approvers: int = 1
    # Each named subject is listed in every step's ledger entry as a 44-byte ref, and an entry
    # holds at most 64 KiB: 1,000 refs leave room for the rest of the event.
    max_subjects: int = 1_000
    min_justification_chars: int = 10
    break_glass_default_duration: timedelta = timedelta(minutes=30)
    break_glass_max_duration: timedelta = timedelta(hours=1)
    break_glass_max_subjects: int = 100
    break_glass_justifications: frozenset[JustificationType] = frozenset(
        {JustificationType.BREAK_GLASS, JustificationType.PRODUCTION_ALERT}
    )
    # The mandatory post-hoc review is due within this window.
    review_within: timedelta = timedelta(hours=72)
    # A request for every subject of a dataset must say so (``all_subjects``) and needs this
    # many approvers more than policy asks for the fields (at most MAX_APPROVERS in all).
    all_subjects_extra_approvers: int = 1
    # How many times a grant may be used in its window; a use is one release under it
    # (a read, batch read, search page or export that returns records). A request may ask
    # for more with ``max_uses``, up to ``max_uses_limit``; approvers see the number.
    default_max_uses: int = 1
    break_glass_default_uses: int = 10
    max_uses_limit: int = 100

    @staticmethod
    def from_settings(raw: dict[str, Any]) -> ApprovalConfig:
        """``[approvals]`` of bastion.toml::

        [approvals]
        all_subjects_extra_approvers = 1   # 0 keeps policy's count for all-subject grants
        default_max_uses = 1               # uses of a grant when the request names none
        break_glass_default_uses = 10
        max_uses_limit = 100               # the most a request may ask for
        """
        table = raw.get("approvals", {})
        if not isinstance(table, dict):
            raise ConfigError("[approvals] must be a table")
        known = {
            "all_subjects_extra_approvers": (0, MAX_APPROVERS),
            "default_max_uses": (1, 1_000_000),
            "break_glass_default_uses": (1, 1_000_000),
            "max_uses_limit": (1, 1_000_000),
        }
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"approvals.{unknown[0]} is not a known setting")
        values: dict[str, Any] = {}
        for name, (lo, hi) in known.items():
            if name not in table:
                continue
            value = table[name]
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"approvals.{name} must be an integer from {lo} to {hi}")
            values[name] = value
        config = replace(ApprovalConfig(), **values)
        if max(config.default_max_uses, config.break_glass_default_uses) > config.max_uses_limit:
            raise ConfigError("approvals: a default number of uses exceeds max_uses_limit")
        return config


class AccessRequestSpec(BaseModel):
    """What a principal asks approvers for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(min_length=1, max_length=128)
    action: Action = Action.READ
    fields: tuple[str, ...] | None = Field(default=None, max_length=256)
    subjects: tuple[str, ...] = Field(default=(), max_length=100_000)
    justification_type: JustificationType
    justification_detail: str = Field(min_length=1, max_length=2000)
    ticket: str = Field(default="", max_length=128)
    purpose: str = Field(default="", max_length=512)
    duration_seconds: int | None = Field(default=None, gt=0)
    # Every subject of the dataset: explicit (``subjects`` then stays empty), and it needs
    # more approvers. An empty ``subjects`` without it is refused.
    all_subjects: bool = False
    # How many times the grant may be used in its window (default: the service's
    # ``default_max_uses``, 1 unless configured).
    max_uses: int | None = Field(default=None, ge=1)

    @field_validator("fields", "subjects")
    @classmethod
    def _distinct(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("must not repeat a value")
        if v is not None and any(not s or len(s) > 256 for s in v):
            raise ValueError("values must be 1 to 256 characters")
        return v

    @field_validator("justification_detail", "ticket", "purpose")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


@dataclass(frozen=True)
class AccessRequestRecord:
    id: str
    kind: Literal["approval", "break-glass"]
    requester: Actor
    dataset: str
    action: Action
    fields: tuple[str, ...]
    subjects: tuple[str, ...]
    justification_type: JustificationType
    justification_detail: str
    ticket: str
    purpose: str
    duration_seconds: int
    approvers_required: int
    policy_sha256: str
    created_at: str
    request_sha256: str
    status: RequestStatus
    approvers: tuple[str, ...] = ()
    grant_id: str | None = None
    ledger_index: int | None = None
    all_subjects: bool = False
    # None only for requests made before grants had a number of uses (unlimited then).
    max_uses: int | None = None

    def canonical(self) -> dict[str, Any]:
        """What approvers approve and the grant's hash binds: everything but the status.

        ``all_subjects`` and ``max_uses`` appear only when set, so requests stored before
        they existed keep their hash."""
        extra: dict[str, Any] = {}
        if self.all_subjects:
            extra["all_subjects"] = True
        if self.max_uses is not None:
            extra["max_uses"] = self.max_uses
        return {
            **extra,
            "request_id": self.id,
            "kind": self.kind,
            "requester": self.requester.model_dump(mode="json", exclude_none=True),
            "dataset": self.dataset,
            "action": self.action.value,
            "fields": sorted(self.fields),
            "subjects": sorted(self.subjects),
            "justification": {
                "type": self.justification_type.value,
                "detail": self.justification_detail,
            },
            "ticket": self.ticket,
            "purpose": self.purpose,
            "duration_seconds": self.duration_seconds,
            "approvers_required": self.approvers_required,
            "policy_sha256": self.policy_sha256,
            "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.canonical(),
            "request_sha256": self.request_sha256,
            "status": self.status,
            "approvers": list(self.approvers),
            "grant_id": self.grant_id,
            "ledger_index": self.ledger_index,
        }


@dataclass(frozen=True)
class IssuedGrant:
    token: str
    claims: GrantClaims

    @property
    def grant_id(self) -> str:
        return self.claims.grant_id

    @property
    def expires_at(self) -> datetime:
        return self.claims.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "token": self.token,
            "expires_at": iso(self.expires_at),
            "claims": self.claims.to_json(),
        }


@dataclass(frozen=True)
class StepOutcome:
    """The result of one workflow step, with the ledger receipt of its event."""

    request: AccessRequestRecord
    event: Approval
    receipt: Receipt
    grant: IssuedGrant | None = None
    review_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.to_json(),
            "step": self.event.step,
            "ledger_index": self.receipt.index,
            "grant": self.grant.to_json() if self.grant else None,
            "review_id": self.review_id,
        }


@dataclass(frozen=True)
class BreakGlassAlert:
    """Handed to every alert hook when someone breaks the glass."""

    request_id: str
    grant_id: str
    review_id: str
    principal: Actor
    dataset: str
    fields: tuple[str, ...]
    subjects: tuple[str, ...]
    justification_type: JustificationType
    justification_detail: str
    expires_at: str
    ledger_index: int


@dataclass(frozen=True)
class Review:
    id: str
    request_id: str
    grant_id: str
    principal_id: str
    status: Literal["pending", "justified", "unjustified"]
    created_at: str
    due_at: str
    reviewer_id: str | None
    reviewed_at: str | None
    notes: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AlertCounters:
    """In-process counters a metrics exporter can read (Prometheus hook)."""

    break_glass: int = 0
    refusals: int = 0
    alert_hook_failures: int = 0
    by_refusal: dict[str, int] = field(default_factory=dict)


AlertHook = Callable[[BreakGlassAlert], None]
EngineSource = Callable[[], PolicyEngine]
# Subject ids -> the keyed refs the ledger carries, one per id and in order; never an id.
SubjectRefs = Callable[[Sequence[str]], Sequence[str]]


def migrate_approvals(db: Database) -> None:
    db.migrate("approvals", APPROVALS_DDL)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ApprovalService:
    def __init__(
        self,
        db: Database,
        ledger: LedgerWriter,
        clock: Clock,
        engine: EngineSource,
        signing_key: Ed25519PrivateKey,
        *,
        subject_refs: SubjectRefs,
        public_text: PublicText,
        config: ApprovalConfig | None = None,
        alert_hooks: Sequence[AlertHook] = (),
    ) -> None:
        """``subject_refs`` maps subject ids to the keyed refs written to the (public) ledger
        instead of the ids; it is required, so no service can record raw ids. ``public_text``
        turns typed text (justification details, reasons, review notes) into what the ledger
        carries: by default a keyed commitment, the text kept in the database."""
        self.db = db
        self._subject_refs = subject_refs
        self.public_text = public_text
        self.ledger = ledger
        self.clock = clock
        self._engine = engine
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.key_id = key_id(self.public_key)
        self.config = config or ApprovalConfig()
        self.alert_hooks = list(alert_hooks)
        self.counters = AlertCounters()

    # ------------------------------------------------------------------ helpers

    def refs(self, subjects: Sequence[str]) -> list[str]:
        """The keyed refs recorded for these subject ids (checked: never an id itself)."""
        return checked_refs(self._subject_refs, subjects)

    def _actor(self, attrs: PrincipalAttributes) -> Actor:
        """The actor as the ledger names it: a data subject under their keyed ref."""
        actor = attrs.actor()
        if attrs.role == "subject":
            (ref,) = self.refs([attrs.subject_id or attrs.id])
            actor = actor.model_copy(update={"id": ref})
        return actor

    def _event(
        self,
        actor: Actor,
        step: ApprovalStep,
        reason: str,
        rec: AccessRequestRecord | None,
        request_id: str,
        **extra: Any,
    ) -> Approval:
        base: dict[str, Any] = {"request_id": request_id}
        if rec is not None:
            base.update(
                request_sha256=rec.request_sha256,
                dataset=rec.dataset,
                action=rec.action.value,
                fields=list(rec.fields),
                subject_refs=self.refs(rec.subjects),
                justification_type=rec.justification_type.value,
                approvers_required=rec.approvers_required,
                all_subjects=True if rec.all_subjects else None,
                max_uses=rec.max_uses,
            )
        base.update(extra)
        return Approval(
            actor=actor,
            reason=(reason or step)[:4096],
            at=iso(self.clock.now()),
            step=step,
            **base,
        )

    def _refuse(
        self,
        kind: RefusalKind,
        detail: str,
        actor: Actor,
        request_id: str,
        rec: AccessRequestRecord | None = None,
    ) -> ApprovalRefused:
        """Record a refused attempt (it may be an attack) and return the error to raise."""
        self.counters.refusals += 1
        self.counters.by_refusal[kind] = self.counters.by_refusal.get(kind, 0) + 1
        event = self._event(
            actor,
            "refused",
            f"{kind}: {detail}",
            rec,
            request_id,
            alert=kind in ("self-approval", "not-an-approver", "self-review", "not-permitted"),
        )
        receipt = self.ledger.append(event)
        return ApprovalRefused(kind, detail, receipt=receipt)

    def _attrs(self, who: PrincipalLike) -> PrincipalAttributes:
        return self._engine().attributes(who)

    def resource(self, rec: AccessRequestRecord) -> ApprovalResource:
        """The Cedar `approve` action's resource for a request (who may approve or see it)."""
        engine = self._engine()
        ds = engine.catalog.dataset(rec.dataset)
        categories = frozenset(
            ds.field(f).category for f in rec.fields if ds.has_field(f) and ds.field(f).category
        )
        return ApprovalResource(
            request_id=rec.id,
            requester_id=rec.requester.id,
            requester_employer=rec.requester.employer or "",
            dataset=rec.dataset,
            categories=frozenset(c for c in categories if isinstance(c, SensitiveCategory)),
            justification=rec.justification_type,
            break_glass=rec.kind == "break-glass",
        )

    def _plan_request(self, spec: AccessRequestSpec, fields: tuple[str, ...]) -> PlanRequest:
        return PlanRequest(
            dataset=spec.dataset,
            action=spec.action,
            fields=fields,
            purpose=spec.purpose,
            justification=spec.justification_type,
            ticket=spec.ticket,
            ticket_subjects=spec.subjects,
            subject_count=len(spec.subjects),
        )

    def _resolve_fields(self, spec: AccessRequestSpec) -> tuple[str, ...]:
        if spec.action not in FIELD_ACTIONS:
            raise InputError("only read, search and export requests need approval")
        ds = self._engine().catalog.dataset(spec.dataset)
        if spec.fields is None:
            return tuple(ds.field_names)
        for name in spec.fields:
            ds.field(name)
        return spec.fields

    def _check_justification(self, spec: AccessRequestSpec) -> None:
        if len(spec.justification_detail) < self.config.min_justification_chars:
            raise InputError(
                f"a justification needs at least {self.config.min_justification_chars} characters",
                field="justification_detail",
            )

    @staticmethod
    def _duration(
        spec: AccessRequestSpec, default: timedelta, maximum: timedelta, too_long: str
    ) -> timedelta:
        duration = timedelta(seconds=spec.duration_seconds) if spec.duration_seconds else default
        if duration > maximum:
            raise InputError(too_long, field="duration_seconds")
        return duration

    @staticmethod
    def _new_record(
        request_id: str,
        kind: Literal["approval", "break-glass"],
        attrs: PrincipalAttributes,
        spec: AccessRequestSpec,
        fields: tuple[str, ...],
        duration: timedelta,
        approvers_required: int,
        policy_sha256: str,
        now: datetime,
        max_uses: int,
    ) -> AccessRequestRecord:
        """A new request, before its hash is known; break-glass is in force from the start."""
        return AccessRequestRecord(
            id=request_id,
            kind=kind,
            requester=attrs.actor(),
            dataset=spec.dataset,
            action=spec.action,
            fields=fields,
            subjects=tuple(sorted(spec.subjects)),
            justification_type=spec.justification_type,
            justification_detail=spec.justification_detail,
            ticket=spec.ticket,
            purpose=spec.purpose,
            duration_seconds=int(duration.total_seconds()),
            approvers_required=approvers_required,
            policy_sha256=policy_sha256,
            created_at=iso(now),
            request_sha256="",
            status="pending" if kind == "approval" else "break-glass",
            all_subjects=spec.all_subjects,
            max_uses=max_uses,
        )

    @staticmethod
    def _insert_request(
        cur: Any,
        rec: AccessRequestRecord,
        requester_id: str,
        doc: dict[str, Any],
        sha: str,
        lapses_unix: int,
        decided_at: str | None,
        ledger_index: int,
    ) -> None:
        # The requester's full id: the record's actor carries it cut to the ledger's length.
        cur.execute(
            "INSERT INTO access_requests (id, kind, requester_id, canonical, request_sha256, "
            "dataset, approvers_required, status, created_at, lapses_unix, decided_at, "
            "ledger_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id,
                rec.kind,
                requester_id,
                json.dumps(doc, sort_keys=True),
                sha,
                rec.dataset,
                rec.approvers_required,
                rec.status,
                rec.created_at,
                lapses_unix,
                decided_at,
                ledger_index,
            ),
        )

    def _check_may_approve(
        self, who: PrincipalLike, attrs: PrincipalAttributes, rec: AccessRequestRecord, role: str
    ) -> None:
        decision = self._engine().can_approve(who, self.resource(rec))
        if not decision.allowed:
            raise self._refuse(
                "not-an-approver",
                f"policy does not allow this {role} ({decision.reason})",
                self._actor(attrs),
                rec.id,
                rec,
            )

    # ------------------------------------------------------------------ reading

    def get(self, request_id: str) -> AccessRequestRecord:
        rows = self.db.query(
            "SELECT id, kind, canonical, request_sha256, status, ledger_index "
            "FROM access_requests WHERE id = ?",
            (request_id,),
        )
        if not rows:
            raise ApprovalRefused("unknown-request", f"no access request {request_id!r}")
        return self._record(rows[0])

    def _record(self, row: tuple[Any, ...]) -> AccessRequestRecord:
        rid, kind, text, sha, status, ledger_index = row
        doc = json.loads(text)
        if request_sha256(doc) != sha:
            raise IntegrityError(f"access request {rid} does not match its recorded hash")
        approvers = tuple(
            r[0]
            for r in self.db.query(
                "SELECT approver_id FROM access_approvals WHERE request_id = ? "
                "ORDER BY approved_at, approver_id",
                (rid,),
            )
        )
        grants = self.db.query(
            "SELECT id FROM access_grants WHERE request_id = ? ORDER BY issued_at", (rid,)
        )
        return AccessRequestRecord(
            id=rid,
            kind=kind,
            requester=Actor.model_validate(doc["requester"]),
            dataset=doc["dataset"],
            action=Action(doc["action"]),
            fields=tuple(doc["fields"]),
            subjects=tuple(doc["subjects"]),
            justification_type=JustificationType(doc["justification"]["type"]),
            justification_detail=doc["justification"]["detail"],
            ticket=doc["ticket"],
            purpose=doc["purpose"],
            duration_seconds=int(doc["duration_seconds"]),
            approvers_required=int(doc["approvers_required"]),
            policy_sha256=doc["policy_sha256"],
            created_at=doc["created_at"],
            request_sha256=sha,
            status=status,
            approvers=approvers,
            grant_id=grants[-1][0] if grants else None,
            ledger_index=ledger_index,
            all_subjects=doc.get("all_subjects") is True,
            max_uses=int(doc["max_uses"]) if doc.get("max_uses") is not None else None,
        )

    def list_requests(
        self, *, status: str | None = None, requester_id: str | None = None, limit: int = 100
    ) -> list[AccessRequestRecord]:
        sql = (
            "SELECT id, kind, canonical, request_sha256, status, ledger_index FROM access_requests"
        )
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if requester_id:
            where.append("requester_id = ?")
            params.append(requester_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(limit)
        return [self._record(r) for r in self.db.query(sql, params)]

    def reviews(self, *, status: str | None = None, limit: int = 100) -> list[Review]:
        sql = (
            "SELECT id, request_id, grant_id, principal_id, status, created_at, due_at, "
            "reviewer_id, reviewed_at, notes FROM break_glass_reviews"
        )
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY due_unix, id LIMIT ?"
        params.append(limit)
        return [Review(*r) for r in self.db.query(sql, params)]

    def overdue_reviews(self) -> list[Review]:
        now = to_unix(self.clock.now())
        return [
            r
            for r in self.reviews(status="pending", limit=10_000)
            if to_unix(datetime.fromisoformat(r.due_at.replace("Z", "+00:00"))) <= now
        ]

    # ------------------------------------------------------------------ requesting

    def _check_subjects(self, spec: AccessRequestSpec) -> None:
        """ "Every subject" is never the silent meaning of an empty list: it is asked for."""
        if spec.all_subjects and spec.subjects:
            raise InputError(
                "all_subjects covers every subject: name no subjects with it", field="subjects"
            )
        if not spec.all_subjects and not spec.subjects:
            raise InputError(
                "name the subjects the access is for, or ask for all_subjects (which needs "
                f"{self.config.all_subjects_extra_approvers} more approver(s))",
                field="subjects",
            )

    def _max_uses(self, spec: AccessRequestSpec, default: int) -> int:
        uses = spec.max_uses if spec.max_uses is not None else default
        if uses > self.config.max_uses_limit:
            raise InputError(
                f"a grant may be used at most {self.config.max_uses_limit} times",
                field="max_uses",
            )
        return uses

    def approvers_needed(self, policy_count: int, *, all_subjects: bool) -> int:
        """Approvers a request needs: policy's count (at least ``min_approvers``), and for
        every subject ``all_subjects_extra_approvers`` more, at most MAX_APPROVERS."""
        needed = max(self.config.min_approvers, policy_count)
        if all_subjects:
            needed += self.config.all_subjects_extra_approvers
        return min(needed, MAX_APPROVERS)

    def request(self, requester: PrincipalLike, spec: AccessRequestSpec) -> StepOutcome:
        """Open an access request; policy decides how many approvers it needs (more for
        every subject), and the grant may be used ``max_uses`` times."""
        self._check_justification(spec)
        if len(spec.subjects) > self.config.max_subjects:
            raise InputError(f"at most {self.config.max_subjects} subjects", field="subjects")
        max_uses = self._max_uses(spec, self.config.default_max_uses)
        duration = self._duration(
            spec,
            self.config.default_duration,
            self.config.max_duration,
            f"duration exceeds the maximum of {self.config.max_duration}",
        )
        engine = self._engine()
        attrs = engine.attributes(requester)
        fields = self._resolve_fields(spec)  # names first: an unknown one is bad input
        self._check_subjects(spec)
        plan = engine.plan(requester, self._plan_request(spec, fields))
        request_id = _new_id("ar")
        hopeless = [f for f in plan.fields if not f.released and not f.needs_approval]
        if hopeless:
            names = ", ".join(f.field for f in hopeless)
            raise self._refuse(
                "denied-by-policy",
                f"no approval can release {names}: {hopeless[0].reason}",
                self._actor(attrs),
                request_id,
            )
        needed = self.approvers_needed(
            plan.approval.approvers if plan.approval else 0, all_subjects=spec.all_subjects
        )
        now = self.clock.now()
        rec = self._new_record(
            request_id,
            "approval",
            attrs,
            spec,
            fields,
            duration,
            needed,
            engine.sha256,
            now,
            max_uses,
        )
        doc = rec.canonical()
        sha = request_sha256(doc)
        event = self._event(
            self._actor(attrs),
            "requested",
            self.public_text.reason("requested", spec.justification_detail),
            None,
            request_id,
            request_sha256=sha,
            dataset=rec.dataset,
            action=rec.action.value,
            fields=list(rec.fields),
            subject_refs=self.refs(rec.subjects),
            justification_type=rec.justification_type.value,
            approvers_required=needed,
            all_subjects=True if rec.all_subjects else None,
            max_uses=rec.max_uses,
        )
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            lapses_unix = to_unix(now + self.config.request_ttl)
            self._insert_request(cur, rec, attrs.id, doc, sha, lapses_unix, None, receipt.index)
        return StepOutcome(self.get(request_id), event, receipt)

    # ------------------------------------------------------------------ deciding

    def _pending(self, request_id: str, actor: Actor) -> AccessRequestRecord:
        try:
            rec = self.get(request_id)
        except ApprovalRefused:
            raise self._refuse(
                "unknown-request", f"no access request {request_id!r}", actor, request_id
            ) from None
        if rec.status != "pending":
            raise self._refuse(
                "not-pending", f"the request is {rec.status}", actor, request_id, rec
            )
        lapses = datetime.fromisoformat(rec.created_at.replace("Z", "+00:00"))
        if self.clock.now() >= lapses + self.config.request_ttl:
            self._lapse(rec)
            raise ApprovalRefused("lapsed", "the request lapsed before enough approvals")
        return rec

    def _check_approver(
        self, rec: AccessRequestRecord, approver: PrincipalLike
    ) -> PrincipalAttributes:
        attrs = self._attrs(approver)
        if attrs.id == rec.requester.id:
            raise self._refuse(
                "self-approval",
                "a requester can never approve their own request",
                self._actor(attrs),
                rec.id,
                rec,
            )
        self._check_may_approve(approver, attrs, rec, "approver")
        return attrs

    def approve(self, request_id: str, approver: PrincipalLike, reason: str) -> StepOutcome:
        """Add one distinct approval; the N-th one issues the grant."""
        actor = self._actor(self._attrs(approver))
        rec = self._pending(request_id, actor)
        attrs = self._check_approver(rec, approver)
        if attrs.id in rec.approvers and len(rec.approvers) >= rec.approvers_required:
            # Enough approvals, but the grant was never recorded (the ledger failed while
            # granting): an approver may ask again, without counting twice.
            issued = self._issue(rec)
            if issued is not None:
                grant, grant_event, grant_receipt = issued
                return StepOutcome(self.get(rec.id), grant_event, grant_receipt, grant=grant)
        if attrs.id in rec.approvers:
            raise self._refuse(
                "duplicate-approval",
                "approvals must come from distinct approvers",
                actor,
                rec.id,
                rec,
            )
        event = self._event(
            actor,
            "approved",
            self.public_text.reason("approved", reason),
            rec,
            rec.id,
            approvers=[*rec.approvers, attrs.id],
        )
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "INSERT INTO access_approvals (request_id, approver_id, approver, reason, "
                "approved_at, ledger_index) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id, approver_id) DO NOTHING",
                (
                    rec.id,
                    attrs.id,
                    actor.model_dump_json(exclude_none=True),
                    # The approver's text as typed (the ledger may carry only its commitment).
                    reason.strip() or "approved",
                    event.at,
                    receipt.index,
                ),
            )
            inserted = cur.rowcount
            count_row = cur.execute(
                "SELECT COUNT(*) FROM access_approvals WHERE request_id = ?", (rec.id,)
            ).fetchone()
        if inserted == 0:
            raise ApprovalRefused("duplicate-approval", "this approver already approved")
        count = int(count_row[0]) if count_row else 0
        updated = self.get(rec.id)
        if count < rec.approvers_required:
            return StepOutcome(updated, event, receipt)
        issued = self._issue(updated)
        if issued is None:  # a concurrent approval is issuing the grant
            return StepOutcome(self.get(rec.id), event, receipt)
        grant, grant_event, grant_receipt = issued
        return StepOutcome(self.get(rec.id), grant_event, grant_receipt, grant=grant)

    def _claims(
        self,
        rec: AccessRequestRecord,
        kind: Literal["approval", "break-glass"],
        fields: tuple[str, ...],
        approvers: tuple[str, ...],
        duration: timedelta,
    ) -> GrantClaims:
        now = self.clock.now()
        return GrantClaims(
            grant_id=_new_id("gr"),
            kind=kind,
            request_id=rec.id,
            request_sha256=rec.request_sha256,
            principal=rec.requester.id,
            dataset=rec.dataset,
            action=rec.action.value,
            fields=fields,
            subjects=rec.subjects,
            approvers=approvers,
            justification=rec.justification_type.value,
            issued_at=now.replace(microsecond=0),
            expires_at=(now + duration).replace(microsecond=0),
            key_id=self.key_id,
            all_subjects=rec.all_subjects,
            max_uses=rec.max_uses,
        )

    def _issue(self, rec: AccessRequestRecord) -> tuple[IssuedGrant, Approval, Receipt] | None:
        """Issue the grant once: claim the request (pending -> granting), record, then store.

        Only the caller that wins the claim appends a "granted" event, so concurrent last
        approvals never leave a second, unusable grant in the ledger. None: another caller
        is issuing (or issued) it.
        """
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "UPDATE access_requests SET status = 'granting' "
                "WHERE id = ? AND status = 'pending'",
                (rec.id,),
            )
            if cur.rowcount != 1:
                return None
        claims = self._claims(
            rec, "approval", rec.fields, rec.approvers, timedelta(seconds=rec.duration_seconds)
        )
        token = sign_grant(claims, self._key)
        event = self._event(
            self._system_actor(),
            "granted",
            f"{len(rec.approvers)} of {rec.approvers_required} approvals"
            + ("; every subject" if rec.all_subjects else ""),
            rec,
            rec.id,
            grant_id=claims.grant_id,
            expires_at=iso(claims.expires_at),
            approvers=list(rec.approvers),
        )
        try:
            receipt = self.ledger.append(event)  # log before the grant exists
        except BaseException:
            with self.db.transaction(lock=_LOCK) as cur:
                cur.execute(
                    "UPDATE access_requests SET status = 'pending' "
                    "WHERE id = ? AND status = 'granting'",
                    (rec.id,),
                )
            raise
        with self.db.transaction(lock=_LOCK) as cur:
            self._insert_grant(cur, claims, token, receipt.index)
            cur.execute(
                "UPDATE access_requests SET status = 'granted', decided_at = ? "
                "WHERE id = ? AND status = 'granting'",
                (event.at, rec.id),
            )
        return IssuedGrant(token, claims), event, receipt

    @staticmethod
    def _insert_grant(cur: Any, claims: GrantClaims, token: str, ledger_index: int) -> None:
        cur.execute(
            "INSERT INTO access_grants (id, request_id, kind, principal_id, token, token_sha256, "
            "issued_at, expires_at, expires_unix, ledger_index) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claims.grant_id,
                claims.request_id,
                claims.kind,
                claims.principal,
                token,
                token_sha256(token),
                iso(claims.issued_at),
                iso(claims.expires_at),
                to_unix(claims.expires_at),
                ledger_index,
            ),
        )

    @staticmethod
    def _system_actor() -> Actor:
        return Actor(id="bastion", kind="system")

    def deny(self, request_id: str, approver: PrincipalLike, reason: str) -> StepOutcome:
        actor = self._actor(self._attrs(approver))
        rec = self._pending(request_id, actor)
        self._check_approver(rec, approver)
        event = self._event(actor, "denied", self.public_text.reason("denied", reason), rec, rec.id)
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "UPDATE access_requests SET status = 'denied', decided_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (event.at, rec.id),
            )
        return StepOutcome(self.get(rec.id), event, receipt)

    def _lapse(self, rec: AccessRequestRecord) -> Approval:
        event = self._event(self._system_actor(), "expired", "the request lapsed", rec, rec.id)
        self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "UPDATE access_requests SET status = 'expired', decided_at = ? "
                "WHERE id = ? AND status IN ('pending', 'granting')",
                (event.at, rec.id),
            )
        return event

    # ------------------------------------------------------------------ grants in use

    def _grant_row(self, grant_id: str) -> tuple[Any, ...] | None:
        rows = self.db.query(
            "SELECT id, request_id, kind, principal_id, token, token_sha256, expires_unix, "
            "revoked_at FROM access_grants WHERE id = ?",
            (grant_id,),
        )
        return rows[0] if rows else None

    def grant_token(self, grant_id: str) -> str:
        row = self._grant_row(grant_id)
        if row is None:
            raise GrantRejected("unknown-grant", f"no grant {grant_id!r}")
        return str(row[4])

    def verify(
        self,
        token: str,
        principal: PrincipalLike,
        *,
        dataset: str,
        action: Action,
        fields: Sequence[str] | None = None,
        use_id: str | None = None,
    ) -> GrantScope:
        """Check a presented grant for this principal and request; raise GrantRejected.

        ``use_id`` (the caller's request id) also counts one use (see :meth:`use`); the
        gateway checks first and counts only when something is about to be released under
        the grant. ``fields`` None means "whatever the grant covers".
        """
        claims = verify_grant_token(token, self.public_key)
        row = self._grant_row(claims.grant_id)
        if row is None or row[5] != token_sha256(token):
            raise GrantRejected("unknown-grant", "this grant was never issued here")
        rec = self.get(claims.request_id)
        if request_sha256(rec.canonical()) != claims.request_sha256:
            raise GrantRejected("request-mismatch", "the grant is not bound to this request")
        if rec.status not in ("granted", "break-glass"):
            raise GrantRejected("revoked", f"the request is {rec.status}")
        now = self.clock.now()
        if now < claims.issued_at:
            raise GrantRejected("not-yet-valid", "the grant is not valid yet")
        if now >= claims.expires_at:
            raise GrantRejected("expired", f"the grant expired at {iso(claims.expires_at)}")
        if row[7] is not None:
            raise GrantRejected("revoked", f"the grant was revoked at {row[7]}")
        if self._attrs(principal).id != claims.principal:
            raise GrantRejected("wrong-principal", "the grant was issued to someone else")
        wanted = claims.fields if fields is None else tuple(fields)
        if not claims.covers(dataset, action.value, wanted):
            raise GrantRejected(
                "out-of-scope", "the grant does not cover this dataset, action or field"
            )
        scope = GrantScope(
            grant_id=claims.grant_id,
            kind=claims.kind,
            dataset=claims.dataset,
            action=Action(claims.action),
            fields=frozenset(claims.fields),
            subjects=frozenset(claims.subjects),
            approvals=len(set(claims.approvers)),
            justification=JustificationType(claims.justification),
            # From the stored request, which the grant's hash binds (checked above).
            all_subjects=rec.all_subjects,
            max_uses=rec.max_uses,
        )
        if use_id is not None:
            self.use(scope, use_id)
        return scope

    def use(self, scope: GrantScope, use_id: str) -> int:
        """Count one use of a verified grant; returns how many it has had, this one included.

        The check and the count are one transaction under the approvals lock (SQLite's write
        lock, PostgreSQL's advisory lock), so concurrent uses on any number of gateways over
        one database never exceed ``max_uses``. Refused: ``replayed`` when this use id was
        presented before, ``exhausted`` when every allowed use is spent (nothing counted)."""
        with self.db.transaction(lock=_LOCK) as cur:
            seen = cur.execute(
                "SELECT 1 FROM access_grant_uses WHERE grant_id = ? AND use_id = ?",
                (scope.grant_id, use_id),
            ).fetchone()
            if seen is not None:
                raise GrantRejected("replayed", "this grant use was already presented")
            row = cur.execute(
                "SELECT COUNT(*) FROM access_grant_uses WHERE grant_id = ?", (scope.grant_id,)
            ).fetchone()
            used = int(row[0]) if row else 0
            if scope.max_uses is not None and used >= scope.max_uses:
                raise GrantRejected(
                    "exhausted",
                    f"the grant allows {scope.max_uses} use(s) and all were used",
                )
            cur.execute(
                "INSERT INTO access_grant_uses (grant_id, use_id, used_at) VALUES (?, ?, ?) "
                "ON CONFLICT (grant_id, use_id) DO NOTHING",
                (scope.grant_id, use_id, iso(self.clock.now())),
            )
            if cur.rowcount == 0:
                raise GrantRejected("replayed", "this grant use was already presented")
        return used + 1

    def revoke(self, grant_id: str, actor: PrincipalLike, reason: str) -> StepOutcome:
        """Revoke a grant. Approvers may revoke any grant; a holder may give up their own."""
        attrs = self._attrs(actor)
        row = self._grant_row(grant_id)
        if row is None:
            raise self._refuse(
                "unknown-grant", f"no grant {grant_id!r}", self._actor(attrs), grant_id
            )
        rec = self.get(str(row[1]))
        if row[7] is not None or to_unix(self.clock.now()) >= int(row[6]):
            raise self._refuse(
                "not-active",
                "the grant is already revoked or expired",
                self._actor(attrs),
                rec.id,
                rec,
            )
        if attrs.id != row[3]:
            self._check_may_approve(actor, attrs, rec, "revoker")
        event = self._event(
            self._actor(attrs),
            "revoked",
            self.public_text.reason("revoked", reason),
            rec,
            rec.id,
            grant_id=grant_id,
        )
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "UPDATE access_grants SET revoked_at = ?, revoked_by = ? "
                "WHERE id = ? AND revoked_at IS NULL",
                (event.at, attrs.id, grant_id),
            )
        return StepOutcome(self.get(rec.id), event, receipt)

    def expire_due(self) -> list[Approval]:
        """Record in the ledger every grant that has expired and every request that lapsed."""
        now = self.clock.now()
        events: list[Approval] = []
        due = self.db.query(
            "SELECT id, request_id, expires_at FROM access_grants "
            "WHERE expiry_recorded = 0 AND revoked_at IS NULL AND expires_unix <= ? ORDER BY id",
            (to_unix(now),),
        )
        for grant_id, request_id, expires_at in due:
            rec = self.get(request_id)
            event = self._event(
                self._system_actor(),
                "expired",
                "the grant reached its expiry",
                rec,
                rec.id,
                grant_id=grant_id,
                expires_at=expires_at,
            )
            self.ledger.append(event)
            with self.db.transaction(lock=_LOCK) as cur:
                cur.execute(
                    "UPDATE access_grants SET expiry_recorded = 1 WHERE id = ?", (grant_id,)
                )
            events.append(event)
        lapsed = self.db.query(
            "SELECT id FROM access_requests WHERE status IN ('pending', 'granting') "
            "AND lapses_unix <= ? "
            "ORDER BY id",
            (to_unix(now),),
        )
        for (request_id,) in lapsed:
            events.append(self._lapse(self.get(request_id)))
        return events

    # ------------------------------------------------------------------ break-glass

    def break_glass(self, principal: PrincipalLike, spec: AccessRequestSpec) -> StepOutcome:
        """Immediate, short access for an emergency: alert now, review afterwards."""
        self._check_justification(spec)
        if spec.justification_type not in self.config.break_glass_justifications:
            allowed = ", ".join(sorted(j.value for j in self.config.break_glass_justifications))
            raise InputError(
                f"break-glass needs a justification of type {allowed}", field="justification_type"
            )
        if not spec.subjects or spec.all_subjects:
            raise InputError("break-glass must name the subjects it needs", field="subjects")
        if len(spec.subjects) > self.config.break_glass_max_subjects:
            raise InputError(
                f"break-glass covers at most {self.config.break_glass_max_subjects} subjects",
                field="subjects",
            )
        max_uses = self._max_uses(spec, self.config.break_glass_default_uses)
        duration = self._duration(
            spec,
            self.config.break_glass_default_duration,
            self.config.break_glass_max_duration,
            f"break-glass lasts at most {self.config.break_glass_max_duration}",
        )
        engine = self._engine()
        attrs = engine.attributes(principal)
        fields = self._resolve_fields(spec)
        request_id = _new_id("bg")
        # Ask policy what a break-glass session would release for this caller.
        probe = GrantScope(
            grant_id="break-glass-probe",
            kind="break-glass",
            dataset=spec.dataset,
            action=spec.action,
            fields=frozenset(fields),
            subjects=frozenset(spec.subjects),
            approvals=0,
            justification=spec.justification_type,
        )
        plan_request = self._plan_request(spec, fields)
        plan = engine.plan(principal, plan_request, grant=probe)
        normal = engine.plan(principal, plan_request)
        released = tuple(f for f in fields if plan.field(f).released)
        # Breaking the glass must be what opens something; otherwise it is not an emergency
        # access but an ordinary one, and must not raise alerts or skip approvals.
        gained = [
            f
            for f in released
            if not normal.field(f).released
            or normal.field(f).transform is not plan.field(f).transform
        ]
        if not gained:
            raise self._refuse(
                "not-permitted",
                "policy allows this principal no break-glass access here",
                self._actor(attrs),
                request_id,
            )
        now = self.clock.now()
        rec = self._new_record(
            request_id,
            "break-glass",
            attrs,
            spec,
            released,
            duration,
            0,
            engine.sha256,
            now,
            max_uses,
        )
        doc = rec.canonical()
        sha = request_sha256(doc)
        rec = AccessRequestRecord(**{**rec.__dict__, "request_sha256": sha})
        claims = self._claims(rec, "break-glass", released, (), duration)
        token = sign_grant(claims, self._key)
        review_id = _new_id("rv")
        due = now + self.config.review_within
        event = self._event(
            self._actor(attrs),
            "break-glass",
            self.public_text.reason("break-glass", spec.justification_detail),
            rec,
            rec.id,
            grant_id=claims.grant_id,
            expires_at=iso(claims.expires_at),
            review_id=review_id,
            alert=True,
        )
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            self._insert_request(
                cur, rec, attrs.id, doc, sha, to_unix(now), rec.created_at, receipt.index
            )
            self._insert_grant(cur, claims, token, receipt.index)
            cur.execute(
                "INSERT INTO break_glass_reviews (id, request_id, grant_id, principal_id, status, "
                "created_at, due_at, due_unix) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                (
                    review_id,
                    rec.id,
                    claims.grant_id,
                    attrs.id,
                    rec.created_at,
                    iso(due),
                    to_unix(due),
                ),
            )
        self._alert(
            BreakGlassAlert(
                request_id=rec.id,
                grant_id=claims.grant_id,
                review_id=review_id,
                principal=attrs.actor(),
                dataset=rec.dataset,
                fields=released,
                subjects=rec.subjects,
                justification_type=spec.justification_type,
                justification_detail=spec.justification_detail,
                expires_at=iso(claims.expires_at),
                ledger_index=receipt.index,
            )
        )
        return StepOutcome(
            self.get(rec.id), event, receipt, grant=IssuedGrant(token, claims), review_id=review_id
        )

    def _alert(self, alert: BreakGlassAlert) -> None:
        self.counters.break_glass += 1
        for hook in self.alert_hooks:
            try:
                hook(alert)
            except Exception:  # an alert channel being down must not undo the record
                self.counters.alert_hook_failures += 1

    def review(
        self,
        review_id: str,
        reviewer: PrincipalLike,
        outcome: Literal["justified", "unjustified"],
        notes: str,
    ) -> StepOutcome:
        """Close a break-glass review. Someone other than the person who broke the glass,
        allowed to approve access, must do it."""
        attrs = self._attrs(reviewer)
        rows = self.db.query(
            "SELECT request_id, principal_id, status FROM break_glass_reviews WHERE id = ?",
            (review_id,),
        )
        if not rows:
            raise self._refuse(
                "unknown-review", f"no review {review_id!r}", self._actor(attrs), review_id
            )
        request_id, principal_id, status = rows[0]
        rec = self.get(request_id)
        if status != "pending":
            raise self._refuse(
                "already-reviewed", f"the review is {status}", self._actor(attrs), rec.id, rec
            )
        if attrs.id == principal_id:
            raise self._refuse(
                "self-review",
                "nobody reviews their own break-glass",
                self._actor(attrs),
                rec.id,
                rec,
            )
        self._check_may_approve(reviewer, attrs, rec, "reviewer")
        if not notes.strip():
            raise InputError("a review needs notes", field="notes")
        event = self._event(
            self._actor(attrs),
            "reviewed",
            # The outcome is a word from a closed set (clear); the notes are typed text.
            self.public_text.reason(outcome, notes, published=f"{outcome}: {notes.strip()}"),
            rec,
            rec.id,
            review_id=review_id,
            alert=outcome == "unjustified",
        )
        receipt = self.ledger.append(event)
        with self.db.transaction(lock=_LOCK) as cur:
            cur.execute(
                "UPDATE break_glass_reviews SET status = ?, reviewer_id = ?, reviewed_at = ?, "
                "notes = ? WHERE id = ? AND status = 'pending'",
                (outcome, attrs.id, event.at, notes.strip(), review_id),
            )
        return StepOutcome(rec, event, receipt, review_id=review_id)
