"""What every step of the approval workflow shares: the service's context (database, ledger,
clock, policy engine, signing key), its events and recorded refusals, reading a request back
(checked against its hash), and the checks a new request or break-glass must pass.

The steps themselves are in ``access_requests`` (request, approve, deny), ``grant_uses``
(verify, count, revoke, expire), ``break_glass`` and ``reviews``; ``approvals.ApprovalService``
is all of them over one ``ApprovalRepository``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.catalog import SensitiveCategory
from bastion.clock import Clock, iso
from bastion.errors import InputError, IntegrityError
from bastion.events import Actor, Approval, ApprovalStep
from bastion.ledger.api import LedgerWriter
from bastion.policy.approval_model import (
    AccessRequestRecord,
    AccessRequestSpec,
    AlertCounters,
    AlertHook,
    ApprovalConfig,
    ApprovalRefused,
    RefusalKind,
)
from bastion.policy.approval_repository import ApprovalRepository, RequestRow
from bastion.policy.engine import ApprovalResource
from bastion.policy.freetext import PublicText
from bastion.policy.grants import GrantClaims, key_id, request_sha256
from bastion.policy.plan import PlanRequest
from bastion.policy.principal import PrincipalAttributes, PrincipalLike
from bastion.policy.vocabulary import FIELD_ACTIONS, Action, JustificationType
from bastion.policy.workflow import EngineSource, SubjectRefs, checked_refs
from bastion.store import Database


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ApprovalSteps:
    """The context and helpers every step shares. The steps subclass it, and
    ``ApprovalService`` combines them, so one instance carries one database, ledger, clock,
    engine source and key (tests swap ``ledger`` or ``public_text`` on it and every step sees
    the change)."""

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
        self.repo = ApprovalRepository(db)
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

    # ------------------------------------------------------------------ shared by the steps

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

    def _max_uses(self, spec: AccessRequestSpec, default: int) -> int:
        uses = spec.max_uses if spec.max_uses is not None else default
        if uses > self.config.max_uses_limit:
            raise InputError(
                f"a grant may be used at most {self.config.max_uses_limit} times",
                field="max_uses",
            )
        return uses

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

    def get(self, request_id: str) -> AccessRequestRecord:
        row = self.repo.request(request_id)
        if row is None:
            raise ApprovalRefused("unknown-request", f"no access request {request_id!r}")
        return self._record(row)

    def _record(self, row: RequestRow) -> AccessRequestRecord:
        """The request as stored, refused if it no longer matches the hash grants bind."""
        doc = json.loads(row.canonical)
        if request_sha256(doc) != row.request_sha256:
            raise IntegrityError(f"access request {row.id} does not match its recorded hash")
        return AccessRequestRecord(
            id=row.id,
            kind=row.kind,
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
            request_sha256=row.request_sha256,
            status=row.status,
            approvers=self.repo.approver_ids(row.id),
            grant_id=self.repo.latest_grant_id(row.id),
            ledger_index=row.ledger_index,
            all_subjects=doc.get("all_subjects") is True,
            max_uses=int(doc["max_uses"]) if doc.get("max_uses") is not None else None,
        )

    def list_requests(
        self, *, status: str | None = None, requester_id: str | None = None, limit: int = 100
    ) -> list[AccessRequestRecord]:
        rows = self.repo.requests(status=status, requester_id=requester_id, limit=limit)
        return [self._record(row) for row in rows]

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
            grant_id=new_id("gr"),
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

    @staticmethod
    def _system_actor() -> Actor:
        return Actor(id="bastion", kind="system")

    def _lapse(self, rec: AccessRequestRecord) -> Approval:
        event = self._event(self._system_actor(), "expired", "the request lapsed", rec, rec.id)
        self.ledger.append(event)
        with self.repo.writing() as w:
            w.move_request(
                rec.id, "expired", only_from=("pending", "granting"), decided_at=event.at
            )
        return event
