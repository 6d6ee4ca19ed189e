"""Typed events: what the ledger records. Pure data, shared by every writer and verifier.

Every event names who (``actor``), what (``type`` plus its own fields), why (``reason``)
and when (``at``). Its ledger entry is the RFC 8785 canonical JSON of the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# The tlog-tiles entry bundle prefixes each entry with a uint16 length, so 64 KiB - 1 is the cap.
MAX_ENTRY_BYTES = 64 * 1024 - 1


class Actor(BaseModel):
    """Who acted, with the attributes Access Transparency shows a customer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    kind: Literal["operator", "principal", "system", "subject", "auditor", "builder"] = "operator"
    employer: str | None = None
    employer_country: str | None = None
    location_country: str | None = None
    role: str | None = None


SYSTEM = Actor(id="bastion", kind="system")


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    actor: Actor
    reason: str = Field(min_length=1, max_length=4096)
    at: str = Field(description="RFC 3339 UTC time the event happened")


class FieldRelease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    record: str
    field: str
    transform: str


class AccessDecision(_Event):
    """A request was decided. Recorded for allows and denials alike, before any data leaves."""

    type: Literal["access.decision"] = "access.decision"
    request_id: str
    action: str
    dataset: str
    decision: Literal["allow", "deny"]
    policies: list[str] = []
    purpose: str | None = None
    justification_type: str | None = None
    ticket: str | None = None
    approval_ids: list[str] = []
    subjects: list[str] = []
    released: list[FieldRelease] = []
    denied_reason: str | None = None
    # Access Transparency and bulk releases (the gateway). ``subjects`` holds keyed hashes
    # (the vault's ``subject_hash``), never raw subject ids. A bulk release is recorded
    # compactly: every record in ``released_records`` released every field of
    # ``released_fields`` (field -> transform); ``released`` lists explicit pairs instead.
    justification_detail: str | None = None
    grant_id: str | None = None
    break_glass: bool | None = None
    access_request_id: str | None = None
    policy_sha256: str | None = None
    row_filter: str | None = None
    released_fields: dict[str, str] | None = None
    released_records: list[str] | None = None


class Export(_Event):
    type: Literal["export"] = "export"
    dataset: str
    destination: str
    records: int
    fields: list[str]


class DataIngest(_Event):
    """A file was sealed into the vault (all or nothing)."""

    type: Literal["data.ingest"] = "data.ingest"
    dataset: str
    source: str
    records: int
    sealed_values: int
    source_sha256: str | None = None


class RecordWrite(BaseModel):
    """One record a write touched: its key, new version and subject (as a keyed hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record: str
    version: int
    subject: str = Field(description="keyed subject ref (hmac-sha256:...), never the id")


class DataWrite(_Event):
    """A write through the gateway: recorded in the same commit as the data, before the
    write is acknowledged. Names the fields written and commits to their new content with a
    keyed hash (``content_commitment``); never carries a value."""

    type: Literal["data.write"] = "data.write"
    request_id: str
    dataset: str
    op: Literal["insert", "upsert", "update", "delete"]
    records: list[RecordWrite]
    fields: list[str]
    content_commitment: str = Field(description="hmac-sha256 over the sealed content")
    policies: list[str] = []
    policy_sha256: str | None = None
    idempotency_key_sha256: str | None = None


class DeletionReceipt(_Event):
    """A subject's data key and pseudonym mappings were destroyed (crypto-shredding)."""

    type: Literal["deletion.receipt"] = "deletion.receipt"
    subject_hash: str = Field(description="keyed hash of the subject id, not the id itself")
    key_id: str
    records_affected: int
    pseudonyms_removed: int
    method: str = "crypto-shred: data key destroyed"


class KeyRotation(_Event):
    type: Literal["key.rotation"] = "key.rotation"
    provider: str
    old_version: int | None = None
    new_version: int
    rewrapped: int
    retired: list[int] = []


class PolicyChange(_Event):
    type: Literal["policy.change"] = "policy.change"
    policy_sha256: str
    previous_sha256: str | None = None
    policies: list[str]


ApprovalStep = Literal[
    "requested",
    "approved",
    "granted",
    "denied",
    "revoked",
    "expired",
    "break-glass",
    "reviewed",
    "refused",
]


class Approval(_Event):
    type: Literal["approval"] = "approval"
    request_id: str
    step: Literal[
        "requested",
        "approved",
        "granted",
        "denied",
        "revoked",
        "expired",
        "break-glass",
        "reviewed",
        "refused",  # an attempt the workflow refused (self-approval, not an approver, ...)
    ]
    request_sha256: str | None = None
    grant_id: str | None = None
    expires_at: str | None = None
    # What was asked for and why (Access Approval / Access Transparency fields).
    # (Optional and None by default, so entries written before these fields encode the same.)
    dataset: str | None = None
    action: str | None = None
    fields: list[str] | None = None
    # Legacy: raw subject ids, as entries written before ``subject_refs`` carried them. The
    # log is public, so nothing writes this any more.
    subjects: list[str] | None = None
    justification_type: str | None = None
    approvers_required: int | None = None
    approvers: list[str] | None = None
    review_id: str | None = None
    # True when the step must page someone (break-glass, refused approvals).
    alert: bool | None = None
    # The subjects the request names, as the keyed 128-bit refs access decisions carry
    # (``hmac-sha256:<32 hex>``), never raw ids: the subject finds these steps by that ref.
    subject_refs: list[str] | None = None
    # True when the request asked for every subject of the dataset (``all_subjects``): it
    # names none, and needs more approvers (``approvers_required`` counts them).
    all_subjects: bool | None = None
    # How many times the grant may be used (a use is one release under it) in its window.
    max_uses: int | None = None


class TicketChange(_Event):
    """A registered ticket opened or closed by a ticketing service, or an attempt refused.

    A ticket names the subjects staff may read under it; the log is public, so they are
    listed as the keyed subject refs access decisions carry, never as ids. The ticket id has a
    shape that cannot carry text (``SUP-1042``), so it is in clear."""

    type: Literal["ticket"] = "ticket"
    ticket: str
    step: Literal["opened", "closed", "refused"]
    subject_refs: list[str] | None = None
    # Principal ids the ticket is assigned to; none: any principal policy lets read with it.
    assignees: list[str] | None = None
    expires_at: str | None = None
    alert: bool | None = None


class ReleaseApproval(_Event):
    type: Literal["release.approval"] = "release.approval"
    artifact_sha256: str
    app: str
    channel: str
    vsa_envelope_sha256: str
    envelope: dict[str, Any] | None = None
    # The DSSE envelopes the VSA was computed from (e.g. "provenance", "review"), so that the
    # log alone is the full binary-transparency record.
    attestations: dict[str, dict[str, Any]] | None = None


class AnalyticsQuery(_Event):
    type: Literal["analytics.query"] = "analytics.query"
    analyst: str
    organization: str
    template: str
    parameters: dict[str, Any]
    epsilon_spent: float
    keys_released: int
    # Added by the clean room (optional, so older entries still decode):
    query_id: str | None = None
    delta_spent: float | None = None
    outcome: Literal["released", "refused", "failed"] | None = None


class AnalyticsBudgetChange(_Event):
    """An administrator set, raised or reset a clean-room privacy budget."""

    type: Literal["analytics.budget"] = "analytics.budget"
    scope: Literal["analyst", "organization"]
    principal: str
    action: Literal["set", "reset"]
    epsilon_limit: float
    delta_limit: float
    previous_epsilon_limit: float | None = None
    previous_epsilon_spent: float | None = None


class SubjectErasure(_Event):
    """A data subject's erasure request (GDPR art. 17), step by step: opened, or refused.

    Its execution is the ``deletion.receipt`` that follows (its reason names the request id).
    The subject appears only as the vault's keyed ``subject_hash``, as in that receipt."""

    type: Literal["subject.erasure"] = "subject.erasure"
    request_id: str = Field(description="the erasure request's id (random hex)")
    subject_hash: str = Field(description="keyed hash of the subject id, never the id")
    # withdrawn: the subject (or a privacy officer) took the request back during cooling-off.
    step: Literal["requested", "refused", "withdrawn"]
    # The subject's keyed ref, as access decisions carry it: the request shows in the
    # subject's own access history (GET /subjects/{id}/accesses). Absent in older entries.
    subject_ref: str | None = None
    due_at: str | None = None
    # True when a legal hold was in place when the request was opened: it waits for release.
    held: bool | None = None
    policies: list[str] = []
    denied_reason: str | None = None


class LegalHoldChange(_Event):
    """A legal hold placed on a subject (it delays erasure), released, listed, or an attempt
    refused. ``reason`` is the typed reason as the public log carries it (a commitment by
    default); the subject appears only as its keyed ``subject_hash``."""

    type: Literal["legal.hold"] = "legal.hold"
    step: Literal["placed", "released", "listed", "refused"]
    hold_id: str | None = None
    subject_hash: str | None = None
    holds: int | None = Field(default=None, description="how many holds a listing returned")
    policies: list[str] = []
    denied_reason: str | None = None


class RetentionSweep(_Event):
    """Records deleted because their dataset's retention period passed: counts and keyed
    refs of the records and their subjects, never a value nor a raw key."""

    type: Literal["retention.sweep"] = "retention.sweep"
    dataset: str
    retention_days: int
    cutoff: str = Field(description="records stored before this RFC 3339 time were deleted")
    records: int
    record_refs: list[str]
    subject_refs: list[str]


class OperatorNote(_Event):
    """An out-of-band statement, e.g. a data centre's wipe certificate."""

    type: Literal["operator.note"] = "operator.note"
    subject: str = Field(min_length=1, max_length=1024)
    detail: dict[str, Any] = {}


class RequestRejected(_Event):
    """A request refused before any decision (bad input, unknown names, oversize pages).

    Nothing was released. Recorded so that probing the gateway leaves a trace.
    """

    type: Literal["request.rejected"] = "request.rejected"
    request_id: str
    endpoint: str
    status: int
    error: str
    dataset: str | None = None
    field: str | None = None


class AuthFailure(_Event):
    type: Literal["auth.failure"] = "auth.failure"
    endpoint: str
    failure: str


class CleanroomSnapshot(_Event):
    """The clean room's snapshot of a dataset was built or refreshed from the vault.

    Recorded before the vault opens anything for it: the entry is the capability
    (``vault.snapshot.SnapshotGrant``) that lets the vault open exactly ``fields`` of
    ``dataset`` for the records the change feed wrote in ``(after_seq, through_seq]``, at most
    ``records`` of them, once. Counts, names and change-feed positions only: never a value,
    a record key or a subject id."""

    type: Literal["cleanroom.snapshot"] = "cleanroom.snapshot"
    snapshot_id: str = Field(description="random hex id of this build")
    dataset: str
    fields: list[str]
    mode: Literal["full", "incremental"]
    after_seq: int = Field(ge=0)
    through_seq: int = Field(ge=0)
    records: int = Field(ge=0, description="most records the range lets the vault open")
    removed: int = Field(default=0, ge=0, description="records the refresh dropped")


class EgressFlowChange(_Event):
    """A flow declaration was loaded, retired, or refused (at load, or when a run found it
    would cross a limit). Recorded for refusals as for loads: a refused flow names its
    reasons by code, so the monitor and an auditor see every attempt."""

    type: Literal["egress.flow"] = "egress.flow"
    flow: str
    version: int = Field(ge=1)
    flow_sha256: str = Field(description="SHA-256 of the declaration's canonical JSON")
    step: Literal["loaded", "refused", "retired", "run-refused"]
    recipient: str
    recipient_employer: str | None = None
    recipient_country: str | None = None
    dataset: str
    kind: Literal["records", "aggregate"]
    fields: list[str]
    restricted_transaction: bool = False
    reasons: list[str] = Field(default=[], description="refusal codes, e.g. field.protected")
    policies: list[str] = []
    policy_sha256: str | None = None


class EgressExtract(_Event):
    """A flow run is about to read its source: the capability the vault opens it with
    (``vault.snapshot.SnapshotGrant``), like ``cleanroom.snapshot``: exactly ``fields`` of
    ``dataset`` for what the change feed wrote in ``(after_seq, through_seq]``, at most
    ``records`` of them, once. Names and counts only."""

    type: Literal["egress.extract"] = "egress.extract"
    extract_id: str = Field(description="random hex id: each extract opens once")
    flow: str
    flow_version: int = Field(ge=1)
    run: int = Field(ge=1)
    dataset: str
    fields: list[str]
    mode: Literal["full", "incremental"]
    after_seq: int = Field(ge=0)
    through_seq: int = Field(ge=0)
    records: int = Field(ge=0, description="most records the range lets the vault open")


class EgressManifest(_Event):
    """A run's signed manifest, appended before anything is delivered. ``envelope`` is the
    DSSE envelope (in-toto Statement) exactly as the recipient receives it, so the log holds
    what was signed; the other fields repeat its figures for readers of the log."""

    type: Literal["egress.manifest"] = "egress.manifest"
    flow: str
    flow_version: int = Field(ge=1)
    manifest_id: str
    recipient: str
    run: int = Field(ge=1)
    rows: int = Field(ge=0)
    tombstones: int = Field(ge=0)
    chunks: int = Field(ge=0)
    cursor_after: int = Field(ge=0)
    cursor_through: int = Field(ge=0)
    envelope: dict[str, Any]


Event = Annotated[
    AccessDecision
    | Export
    | DataIngest
    | DataWrite
    | DeletionReceipt
    | SubjectErasure
    | LegalHoldChange
    | RetentionSweep
    | KeyRotation
    | PolicyChange
    | Approval
    | TicketChange
    | ReleaseApproval
    | AnalyticsQuery
    | AnalyticsBudgetChange
    | CleanroomSnapshot
    | EgressFlowChange
    | EgressExtract
    | EgressManifest
    | OperatorNote
    | AuthFailure
    | RequestRejected,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class EntryTooLarge(ValueError):
    pass


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes."""
    return bytes(rfc8785.dumps(obj))


def encode_event(event: _Event) -> bytes:
    """The ledger entry for an event: its canonical JSON, at most 64 KiB."""
    data = canonical(event.model_dump(mode="json", exclude_none=True))
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryTooLarge(f"entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return data


def decode_event(entry: bytes) -> Event:
    """An entry as its typed event. Fields this version does not know are ignored (a newer
    writer may add optional ones; docs/FORMATS.md), though every model refuses unknown
    fields when Bastion builds an event, so a misspelt field is never written."""
    return EVENT_ADAPTER.validate_json(entry, extra="ignore")
