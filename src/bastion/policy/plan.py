"""The plan a decision produces: per field a transform, plus row filters and approval needs.

The gateway records the plan in the ledger, asks the vault to open exactly the released
fields, applies each field's transform and keeps only rows that pass the row filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.catalog import Classification, SensitiveCategory
from bastion.policy.transforms import FieldKind
from bastion.policy.vocabulary import Action, JustificationType, RowFilterKind, Transform

MAX_REQUEST_FIELDS = 256
MAX_TICKET_SUBJECTS = 10_000


class PlanRequest(BaseModel):
    """What a principal asks for: an action on some fields of one dataset, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(min_length=1, max_length=128)
    action: Action = Action.READ
    # None: every field of the dataset.
    fields: tuple[str, ...] | None = Field(default=None, max_length=MAX_REQUEST_FIELDS)
    purpose: str = Field(default="", max_length=512)
    justification: JustificationType | None = None
    ticket: str = Field(default="", max_length=128)
    # The subjects the ticket names (from the ticketing system); the ticket row filter.
    ticket_subjects: tuple[str, ...] = Field(default=(), max_length=MAX_TICKET_SUBJECTS)
    # How many subjects the request is about, when known (context.subject_count).
    subject_count: int = Field(default=0, ge=0)

    @field_validator("fields")
    @classmethod
    def _distinct(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("fields must be distinct")
        return v

    @field_validator("purpose", "ticket")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


@dataclass(frozen=True)
class GrantScope:
    """What a verified grant (or break-glass session) covers, as the planner needs it."""

    grant_id: str
    kind: Literal["approval", "break-glass"]
    dataset: str
    action: Action
    fields: frozenset[str]
    subjects: frozenset[str]
    approvals: int
    justification: JustificationType | None = None
    # Approved for every subject (asked for explicitly, with more approvers); otherwise only
    # ``subjects`` are released under it, and an empty set releases no row.
    all_subjects: bool = False
    # How many releases the grant allows in its window (None: unlimited, older grants).
    max_uses: int | None = None

    @property
    def break_glass(self) -> bool:
        return self.kind == "break-glass"


@dataclass(frozen=True)
class RowFilter:
    """Only rows whose subject is in ``subjects`` may be released."""

    kind: RowFilterKind
    subjects: frozenset[str]
    policies: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "subjects": sorted(self.subjects),
            "policies": list(self.policies),
        }


@dataclass(frozen=True)
class FieldPlan:
    """What one field becomes, and which policies decided it."""

    field: str
    transform: Transform
    kind: FieldKind
    classification: Classification
    category: SensitiveCategory | None
    policies: tuple[str, ...]
    reason: str
    needs_approval: bool = False
    approvers_required: int = 0
    transform_if_approved: Transform | None = None
    via_grant: bool = False
    row_filters: tuple[RowFilterKind, ...] = ()
    # The catalog keeps the field's values as pseudonym tokens (an identifier of a person).
    pseudonymize: bool = False

    @property
    def released(self) -> bool:
        return self.transform is not Transform.DENY

    @property
    def counted_categories(self) -> frozenset[SensitiveCategory]:
        """What releasing this field counts towards 28 CFR 202.205's thresholds, whatever
        its transform: its category, and covered personal identifiers for a pseudonymized
        identifier (one the catalog pseudonymizes, or one released as a pseudonym), since
        28 CFR 202 counts data "regardless of whether it is anonymized, pseudonymized,
        de-identified or encrypted", also when the catalog gives the field no category."""
        if not self.released:
            return frozenset()
        out = {self.category} if self.category else set()
        if self.pseudonymize or self.transform is Transform.PSEUDONYM:
            out.add(SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS)
        return frozenset(out)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "field": self.field,
            "transform": self.transform.value,
            "kind": self.kind.value,
            "classification": self.classification.value,
            "category": self.category.value if self.category else None,
            "policies": list(self.policies),
            "reason": self.reason,
        }
        if self.needs_approval:
            out["needs_approval"] = True
            out["approvers_required"] = self.approvers_required
            if self.transform_if_approved:
                out["transform_if_approved"] = self.transform_if_approved.value
        if self.via_grant:
            out["via_grant"] = True
        if self.row_filters:
            out["row_filters"] = [r.value for r in self.row_filters]
        return out


@dataclass(frozen=True)
class ApprovalRequirement:
    """The access needs N distinct approvers; these fields wait for them."""

    approvers: int
    fields: tuple[str, ...]
    policies: tuple[str, ...]
    categories: tuple[SensitiveCategory, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "approvers": self.approvers,
            "fields": list(self.fields),
            "policies": list(self.policies),
            "categories": [c.value for c in self.categories],
        }


@dataclass(frozen=True)
class AccessPlan:
    """The decision for one request. ``decision`` is allow when at least one field (or, for
    ``analyze``, the dataset) is released; denied fields are listed with their reasons."""

    dataset: str
    action: Action
    decision: Literal["allow", "deny"]
    fields: tuple[FieldPlan, ...]
    row_filter: RowFilter | None
    policies: tuple[str, ...]
    approval: ApprovalRequirement | None
    policy_sha256: str
    principal_id: str
    grant_id: str | None = None
    break_glass: bool = False
    purpose: str = ""
    justification: JustificationType | None = None
    ticket: str = ""
    denied_reason: str | None = None
    _by_field: dict[str, FieldPlan] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_field.update({f.field: f for f in self.fields})

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def needs_approval(self) -> bool:
        return self.approval is not None

    def field(self, name: str) -> FieldPlan:
        return self._by_field[name]

    @property
    def released(self) -> dict[str, Transform]:
        """Field name -> transform, for the fields that leave (in catalog order)."""
        return {f.field: f.transform for f in self.fields if f.released}

    @property
    def denied_fields(self) -> list[str]:
        return [f.field for f in self.fields if not f.released]

    @property
    def allowed_subjects(self) -> frozenset[str] | None:
        """None: no row restriction. Otherwise only these subjects' rows may leave."""
        return self.row_filter.subjects if self.row_filter else None

    def permits_subject(self, subject_id: str) -> bool:
        return self.row_filter is None or subject_id in self.row_filter.subjects

    @property
    def released_categories(self) -> frozenset[SensitiveCategory]:
        """Sensitive categories of released fields, in any form (clear, generalized, masked,
        pseudonym), pseudonymized identifiers counting as covered personal identifiers: what
        the bulk counters must count (see :attr:`FieldPlan.counted_categories`)."""
        return frozenset(c for f in self.fields for c in f.counted_categories)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "action": self.action.value,
            "decision": self.decision,
            "principal": self.principal_id,
            "fields": [f.to_json() for f in self.fields],
            "row_filter": self.row_filter.to_json() if self.row_filter else None,
            "policies": list(self.policies),
            "approval": self.approval.to_json() if self.approval else None,
            "policy_sha256": self.policy_sha256,
            "grant_id": self.grant_id,
            "break_glass": self.break_glass,
            "purpose": self.purpose,
            "justification": self.justification.value if self.justification else None,
            "ticket": self.ticket,
            "denied_reason": self.denied_reason,
        }


def combine_row_filters(filters: Iterable[RowFilter]) -> RowFilter | None:
    """Several filters bind together: the allowed subjects are their intersection."""
    items = list(filters)
    if not items:
        return None
    subjects = frozenset.intersection(*(f.subjects for f in items))
    kinds = [f.kind for f in items]
    # Report the most specific kind (the grant's when present) with every policy that asked.
    kind = RowFilterKind.GRANT_SUBJECTS if RowFilterKind.GRANT_SUBJECTS in kinds else kinds[0]
    policies = tuple(dict.fromkeys(p for f in items for p in f.policies))
    return RowFilter(kind=kind, subjects=subjects, policies=policies)
