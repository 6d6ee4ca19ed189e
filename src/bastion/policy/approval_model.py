"""The approval workflow's vocabulary: settings, what a principal asks for, the stored request,
the outcome of a step, and the refusals. Plain models with no storage and no ledger, shared by
the requests, grants, break-glass and review steps (``policy/approvals.py`` tells the story)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.clock import iso
from bastion.events import Actor, Approval
from bastion.ledger.api import Receipt
from bastion.policy.grants import GrantClaims, optional_claims
from bastion.policy.vocabulary import Action, JustificationType
from bastion.policy.workflow import StepRefused, distinct_values
from bastion.settings import Settings

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
    def from_settings(settings: Settings) -> ApprovalConfig:
        """``[approvals]`` of bastion.toml, already checked by ``bastion.settings``."""
        return replace(ApprovalConfig(), **settings.approvals.model_dump())


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
        return None if v is None else distinct_values(v)

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
        return {
            **optional_claims(self.all_subjects, self.max_uses),
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
