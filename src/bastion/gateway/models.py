"""The HTTP API's request and response bodies (they are the OpenAPI schema, and the client's types).

Every string and list has a bound, so a request can never make the gateway do unbounded work,
and filters are structured (field, operator, value): nothing a caller sends is ever pasted into
SQL.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.gateway.errors import ReceiptOut
from bastion.settings import HARD_MAX_PAGE

NAME = r"^[A-Za-z0-9_.:@/+-]{1,128}$"
ID = r"^[A-Za-z0-9_.:@/+=-]{1,256}$"
TICKET = r"^[A-Za-z0-9_.:#/-]{1,64}$"
MAX_FIELDS = 64
MAX_FILTERS = 8
MAX_TICKET_SUBJECTS = 100

JustificationTypeName = Literal[
    "customer_initiated_support",
    "service_operation",
    "security_review",
    "production_alert",
    "third_party_data_request",
    "customer_authorized_workflow",
    "break_glass",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Justification(_Strict):
    """Why access is asked for, in Google Access Approval's reason types, with detail."""

    type: JustificationTypeName
    detail: str = Field(min_length=1, max_length=2000)


class AccessContext(_Strict):
    """What the caller states about the access: the context Cedar policies decide on."""

    purpose: str = Field(default="", max_length=200, description="Why, in a few words.")
    justification: Justification | None = None
    ticket: str | None = Field(default=None, pattern=TICKET, description="Ticket reference.")
    ticket_subjects: list[str] = Field(
        default_factory=list,
        max_length=MAX_TICKET_SUBJECTS,
        description="Subjects the ticket names; the 'ticket_subjects' row filter keeps only these.",
    )
    grant_id: str | None = Field(
        default=None, pattern=ID, description="An approved grant or break-glass session to use."
    )
    grant_token: str | None = Field(
        default=None,
        max_length=8192,
        description="The signed grant itself (as issued); an alternative to grant_id.",
    )


FieldList = list[str]


class ReadRequest(_Strict):
    record_id: str = Field(pattern=ID)
    fields: list[str] | None = Field(
        default=None,
        max_length=MAX_FIELDS,
        description="Fields to read (default: every field of the dataset).",
    )
    context: AccessContext = Field(default_factory=AccessContext)


class BatchReadRequest(_Strict):
    record_ids: list[str] = Field(min_length=1, max_length=HARD_MAX_PAGE)
    fields: list[str] | None = Field(default=None, max_length=MAX_FIELDS)
    context: AccessContext = Field(default_factory=AccessContext)


FilterOp = Literal["eq", "in"]


class Filter(_Strict):
    """One structured condition. Only identifying keys can be filtered on: the subject or the
    record id (protected values are sealed, so they cannot be searched without opening them)."""

    field: Literal["subject", "record_id"]
    op: FilterOp = "eq"
    value: str | list[str] = Field(description="A string for eq; a list (max 100) for in.")


class SearchRequest(_Strict):
    filters: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS)
    page_size: int = Field(default=100, ge=1, le=HARD_MAX_PAGE)
    page_token: str | None = Field(default=None, max_length=512)
    fields: list[str] | None = Field(default=None, max_length=MAX_FIELDS)
    context: AccessContext = Field(default_factory=AccessContext)


class ExportRequest(_Strict):
    filters: list[Filter] = Field(default_factory=list, max_length=MAX_FILTERS)
    fields: list[str] | None = Field(default=None, max_length=MAX_FIELDS)
    destination: str = Field(pattern=NAME, description="Where the export goes (for the ledger).")
    limit: int = Field(default=1000, ge=1, le=1_000_000)
    context: AccessContext = Field(default_factory=AccessContext)


class RecordOut(BaseModel):
    record_id: str
    values: dict[str, Any] = Field(description="Released values, each in its planned form.")


class FieldPlanOut(BaseModel):
    field: str
    transform: str = Field(description="clear, mask, generalize, pseudonym or deny.")
    policies: list[str] = Field(default_factory=list, description="Policies that decided it.")


class ReleaseOut(BaseModel):
    """A response that released (or refused) data, with the ledger receipt of its decision."""

    request_id: str
    dataset: str
    decision: Literal["allow", "deny"]
    receipt: ReceiptOut
    receipts: list[ReceiptOut] = Field(
        default_factory=list,
        description="Every entry recording this release (large releases span several).",
    )
    plan: list[FieldPlanOut]
    records: list[RecordOut]
    missing: list[str] = Field(
        default_factory=list, description="Requested record ids that are absent or filtered out."
    )
    next_page_token: str | None = None
    grant_id: str | None = None
    access_request_id: str | None = Field(
        default=None,
        # Sent only when the release opened an access request for the fields it withheld.
        exclude_if=lambda v: v is None,
        description="The access request opened for fields that wait for approvers.",
    )


class DatasetOut(BaseModel):
    name: str
    record_id: str
    subject_key: str
    description: str
    fields: list[dict[str, Any]]


class WhoAmI(BaseModel):
    id: str
    issuer: str
    role: str
    employer: str | None
    employer_country: str | None
    location_country: str | None
    clearance: str
    mfa: bool
    covered_person: bool
    custodian: bool


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: str
    log_size: int | None
    policy_sha256: str | None
    checks: dict[str, str]


class WrittenOut(BaseModel):
    record_id: str
    version: int = Field(description="The record's version after this write (ETag).")
    created: bool
    tokens: dict[str, Any] = Field(
        default_factory=dict,
        description="Pseudonym tokens of the record's interoperable identifiers: keep these "
        "instead of the values.",
    )


class WriteOut(BaseModel):
    request_id: str
    dataset: str
    op: str
    records: list[WrittenOut]
    leaf_hash: str = Field(description="RFC 6962 leaf hash of the write's data.write entry.")
    receipt: ReceiptOut | None = None
    replayed: bool = False
