"""A typed Python client for the gateway (httpx), synchronous.

```python
with GatewayClient("http://127.0.0.1:8443", token=tok) as gw:
    out = gw.read("users", "u_123", fields=["email"], context=Context(purpose="support",
                  ticket="SUP-1"))    # a ticket a ticketing service registered (open_ticket)
    print(out.records[0].values, out.receipt.index)
```

Every non-2xx answer raises :class:`GatewayError` with the gateway's error kind, message and
(when the refusal was recorded) the ledger receipt.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from bastion.gateway.errors import ErrorOut, ReceiptOut
from bastion.gateway.models import (
    AccessContext,
    BatchReadRequest,
    DatasetOut,
    ExportRequest,
    Filter,
    Health,
    Justification,
    ReadRequest,
    ReleaseOut,
    SearchRequest,
    WhoAmI,
    WriteOut,
)

Context = AccessContext

__all__ = [
    "Context",
    "Filter",
    "GatewayClient",
    "GatewayError",
    "Justification",
    "ReleaseOut",
    "TicketResult",
]


class GatewayError(Exception):
    """A refused or failed request, as the gateway described it."""

    def __init__(self, status: int, error: ErrorOut) -> None:
        super().__init__(f"{status} {error.error}: {error.message}")
        self.status = status
        self.kind = error.error
        self.message = error.message
        self.receipt: ReceiptOut | None = error.receipt
        self.request_id = error.request_id
        self.detail = error.detail or {}


@dataclass
class StepResult:
    """One approval-workflow step: the request, the step, its receipt, maybe a grant."""

    request: dict[str, Any]
    step: str
    receipt: ReceiptOut
    grant: dict[str, Any] | None = None
    review_id: str | None = None

    @property
    def grant_id(self) -> str | None:
        return None if self.grant is None else str(self.grant["grant_id"])


@dataclass
class TicketResult:
    """A ticket step: the ticket as registered, the step, and its ledger receipt."""

    ticket: dict[str, Any]
    step: str
    receipt: ReceiptOut

    @staticmethod
    def of(data: dict[str, Any]) -> TicketResult:
        return TicketResult(
            ticket=data["ticket"],
            step=data["step"],
            receipt=ReceiptOut.model_validate(data["receipt"]),
        )


@dataclass
class AccessEntry:
    """One access to a subject's data, with what an offline check needs."""

    index: int
    event: dict[str, Any]
    entry: bytes
    proof: str  # a C2SP tlog-proof bundle


@dataclass
class SubjectAccesses:
    subject: str
    checkpoint: str
    entries: list[AccessEntry] = field(default_factory=list)


def _error(resp: httpx.Response) -> GatewayError:
    try:
        body = ErrorOut.model_validate(resp.json())
    except ValueError:
        body = ErrorOut(error="http-error", message=resp.text[:200] or resp.reason_phrase)
    return GatewayError(resp.status_code, body)


def _access_body(
    dataset: str,
    action: str,
    justification: Justification,
    fields: Sequence[str] | None,
    subjects: Sequence[str],
    ticket: str | None,
    purpose: str,
    duration_seconds: int | None,
    all_subjects: bool = False,
    max_uses: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": dataset,
        "action": action,
        "fields": list(fields) if fields is not None else None,
        "subjects": list(subjects),
        "justification": justification.model_dump(),
        "ticket": ticket,
        "purpose": purpose,
        "duration_seconds": duration_seconds,
    }
    if all_subjects:
        body["all_subjects"] = True
    if max_uses is not None:
        body["max_uses"] = max_uses
    return body


class GatewayClient:
    """Synchronous client. ``token`` is the bearer JWT; ``request_id`` may be fixed per call."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def with_token(self, token: str) -> GatewayClient:
        """Another client for the same gateway, as another principal (shares nothing)."""
        return GatewayClient(self.base_url, token=token, timeout=self._http.timeout.read or 30.0)

    # -- plumbing --------------------------------------------------------------------------

    def _headers(self, request_id: str | None) -> dict[str, str]:
        headers = {"x-request-id": request_id or uuid.uuid4().hex}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        resp = self._http.request(
            method,
            path,
            json=json,
            params=params,
            headers={**self._headers(request_id), **(headers or {})},
        )
        if resp.status_code >= 400:
            raise _error(resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text

    def _release(self, path: str, body: Any, request_id: str | None) -> ReleaseOut:
        data = self.request(
            "POST",
            path,
            json=body.model_dump(mode="json", exclude_none=True),
            request_id=request_id,
        )
        return ReleaseOut.model_validate(data)

    # -- writes ----------------------------------------------------------------------------

    @staticmethod
    def _write_headers(idempotency_key: str | None, if_match: int | None = None) -> dict[str, str]:
        headers = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        return headers

    def write_records(
        self,
        dataset: str,
        records: list[dict[str, Any]],
        *,
        upsert: bool = False,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> WriteOut:
        """Insert (or upsert) records, all or nothing; returns versions and tokens."""
        data = self.request(
            "POST",
            f"/datasets/{dataset}/records",
            json={"records": records, "mode": "upsert" if upsert else "insert"},
            request_id=request_id,
            headers=self._write_headers(idempotency_key),
        )
        return WriteOut.model_validate(data)

    def change_record(
        self,
        dataset: str,
        record_id: str,
        fields: dict[str, Any],
        *,
        if_match: int | None = None,
        idempotency_key: str | None = None,
    ) -> WriteOut:
        data = self.request(
            "PATCH",
            f"/datasets/{dataset}/records/{record_id}",
            json={"fields": fields},
            headers=self._write_headers(idempotency_key, if_match),
        )
        return WriteOut.model_validate(data)

    def delete_record(
        self,
        dataset: str,
        record_id: str,
        *,
        if_match: int | None = None,
        idempotency_key: str | None = None,
    ) -> WriteOut:
        data = self.request(
            "DELETE",
            f"/datasets/{dataset}/records/{record_id}",
            headers=self._write_headers(idempotency_key, if_match),
        )
        return WriteOut.model_validate(data)

    def changes(
        self, dataset: str, *, after: int = 0, limit: int = 100, wait: float = 0
    ) -> dict[str, Any]:
        """Changes after cursor ``after`` (long-polls up to ``wait`` seconds)."""
        result: dict[str, Any] = self.request(
            "GET",
            f"/datasets/{dataset}/changes",
            params={"after": after, "limit": limit, "wait": wait},
        )
        return result

    # -- data-subject rights ---------------------------------------------------------------

    def export_subject(self, subject_id: str) -> dict[str, Any]:
        """Every record about the subject (docs/SUBJECTS.md, ``bastion.subject-export``)."""
        out: dict[str, Any] = self.request("GET", f"/subjects/{subject_id}/export")
        return out

    def request_erasure(self, subject_id: str) -> dict[str, Any]:
        """Open an erasure request; returns the request (status, due time, receipt)."""
        out: dict[str, Any] = self.request("POST", f"/subjects/{subject_id}/erasure-requests")
        return out

    def erasure_status(self, subject_id: str, request_id: str) -> dict[str, Any]:
        """The request, and once executed its deletion receipt with an inclusion proof."""
        out: dict[str, Any] = self.request(
            "GET", f"/subjects/{subject_id}/erasure-requests/{request_id}"
        )
        return out

    def withdraw_erasure(self, subject_id: str, request_id: str) -> dict[str, Any]:
        """Take back a pending erasure request (during its cooling-off); recorded."""
        out: dict[str, Any] = self.request(
            "POST", f"/subjects/{subject_id}/erasure-requests/{request_id}/withdraw"
        )
        return out

    def place_legal_hold(self, subject_id: str, reason: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "POST", f"/subjects/{subject_id}/legal-holds", json={"reason": reason}
        )
        return out

    def release_legal_hold(self, hold_id: str, reason: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "POST", f"/legal-holds/{hold_id}/release", json={"reason": reason}
        )
        return out

    def legal_holds(self, *, subject: str | None = None) -> dict[str, Any]:
        params = {"subject": subject} if subject is not None else None
        out: dict[str, Any] = self.request("GET", "/legal-holds", params=params)
        return out

    # -- service ---------------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self.request("GET", "/health"))

    def jwks(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/.well-known/jwks.json")
        return out

    def metrics(self) -> str:
        return str(self.request("GET", "/metrics"))

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/openapi.json")
        return out

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self.request("GET", "/whoami"))

    def datasets(self) -> list[DatasetOut]:
        return [DatasetOut.model_validate(d) for d in self.request("GET", "/datasets")]

    # -- data ------------------------------------------------------------------------------

    def read(
        self,
        dataset: str,
        record_id: str,
        *,
        fields: Sequence[str] | None = None,
        context: AccessContext | None = None,
        request_id: str | None = None,
    ) -> ReleaseOut:
        body = ReadRequest(
            record_id=record_id,
            fields=list(fields) if fields is not None else None,
            context=context or AccessContext(),
        )
        return self._release(f"/datasets/{dataset}/read", body, request_id)

    def batch_read(
        self,
        dataset: str,
        record_ids: Sequence[str],
        *,
        fields: Sequence[str] | None = None,
        context: AccessContext | None = None,
        request_id: str | None = None,
    ) -> ReleaseOut:
        body = BatchReadRequest(
            record_ids=list(record_ids),
            fields=list(fields) if fields is not None else None,
            context=context or AccessContext(),
        )
        return self._release(f"/datasets/{dataset}/batch-read", body, request_id)

    def search(
        self,
        dataset: str,
        *,
        filters: Sequence[Filter] = (),
        page_size: int = 100,
        page_token: str | None = None,
        fields: Sequence[str] | None = None,
        context: AccessContext | None = None,
        request_id: str | None = None,
    ) -> ReleaseOut:
        body = SearchRequest(
            filters=list(filters),
            page_size=page_size,
            page_token=page_token,
            fields=list(fields) if fields is not None else None,
            context=context or AccessContext(),
        )
        return self._release(f"/datasets/{dataset}/search", body, request_id)

    def export(
        self,
        dataset: str,
        *,
        destination: str,
        filters: Sequence[Filter] = (),
        fields: Sequence[str] | None = None,
        limit: int = 1000,
        context: AccessContext | None = None,
        request_id: str | None = None,
    ) -> ReleaseOut:
        body = ExportRequest(
            filters=list(filters),
            fields=list(fields) if fields is not None else None,
            destination=destination,
            limit=limit,
            context=context or AccessContext(),
        )
        return self._release(f"/datasets/{dataset}/export", body, request_id)

    # -- approvals -------------------------------------------------------------------------

    def _step(self, path: str, body: dict[str, Any]) -> StepResult:
        data = self.request("POST", path, json=body)
        return StepResult(
            request=data["request"],
            step=data["step"],
            receipt=ReceiptOut.model_validate(data["receipt"]),
            grant=data.get("grant"),
            review_id=data.get("review_id"),
        )

    def request_access(
        self,
        dataset: str,
        *,
        justification: Justification,
        action: Literal["read", "search", "export"] = "read",
        fields: Sequence[str] | None = None,
        subjects: Sequence[str] = (),
        ticket: str | None = None,
        purpose: str = "",
        duration_seconds: int | None = None,
        all_subjects: bool = False,
        max_uses: int | None = None,
    ) -> StepResult:
        """Ask approvers for access to ``subjects`` (or, explicitly, ``all_subjects``, which
        needs more approvers); the grant allows ``max_uses`` releases (default 1)."""
        body = _access_body(
            dataset,
            action,
            justification,
            fields,
            subjects,
            ticket,
            purpose,
            duration_seconds,
            all_subjects,
            max_uses,
        )
        return self._step("/access-requests", body)

    def access_requests(
        self, *, status: str | None = None, scope: Literal["mine", "to-approve"] = "mine"
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"scope": scope}
        if status:
            params["status"] = status
        out: list[dict[str, Any]] = self.request("GET", "/access-requests", params=params)
        return out

    def access_request(self, request_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/access-requests/{request_id}")
        return out

    def approve(self, request_id: str, reason: str) -> StepResult:
        return self._step(f"/access-requests/{request_id}/approve", {"reason": reason})

    def deny(self, request_id: str, reason: str) -> StepResult:
        return self._step(f"/access-requests/{request_id}/deny", {"reason": reason})

    def revoke(self, grant_id: str, reason: str) -> StepResult:
        return self._step(f"/grants/{grant_id}/revoke", {"reason": reason})

    def break_glass(
        self,
        dataset: str,
        *,
        justification: Justification,
        subjects: Sequence[str],
        fields: Sequence[str] | None = None,
        ticket: str | None = None,
        purpose: str = "",
        duration_seconds: int | None = None,
        max_uses: int | None = None,
    ) -> StepResult:
        body = _access_body(
            dataset,
            "read",
            justification,
            fields,
            subjects,
            ticket,
            purpose,
            duration_seconds,
            max_uses=max_uses,
        )
        return self._step("/break-glass", body)

    # -- tickets ---------------------------------------------------------------------------

    def open_ticket(
        self,
        ticket_id: str,
        *,
        subjects: Sequence[str],
        expires_at: datetime,
        assignees: Sequence[str] = (),
    ) -> TicketResult:
        """Register a ticket (as a ticketing service): reads naming it may touch only its
        subjects, until it expires or is closed."""
        data = self.request(
            "POST",
            "/tickets",
            json={
                "id": ticket_id,
                "subjects": list(subjects),
                "assignees": list(assignees),
                "expires_at": expires_at.isoformat(),
            },
        )
        return TicketResult.of(data)

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/tickets/{ticket_id}")
        return out

    def close_ticket(self, ticket_id: str) -> TicketResult:
        return TicketResult.of(self.request("POST", f"/tickets/{ticket_id}/close"))

    def reviews(self, *, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        out: list[dict[str, Any]] = self.request("GET", "/reviews", params=params)
        return out

    def review(
        self, review_id: str, outcome: Literal["justified", "unjustified"], notes: str
    ) -> StepResult:
        return self._step(f"/reviews/{review_id}", {"outcome": outcome, "notes": notes})

    # -- transparency ----------------------------------------------------------------------

    def subject_accesses(self, subject_id: str, *, limit: int = 100) -> SubjectAccesses:
        import base64

        data = self.request("GET", f"/subjects/{subject_id}/accesses", params={"limit": limit})
        return SubjectAccesses(
            subject=data["subject"],
            checkpoint=data["checkpoint"],
            entries=[
                AccessEntry(
                    index=int(e["index"]),
                    event=e["event"],
                    entry=base64.b64decode(e["entry"]),
                    proof=e["proof"],
                )
                for e in data["accesses"]
            ],
        )

    # -- policy ----------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/policy")
        return out

    def load_policy(self, text: str, reason: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/policy", json={"text": text, "reason": reason})
        return out

    def explain(
        self,
        dataset: str,
        *,
        action: Literal["read", "search", "export", "analyze"] = "read",
        fields: Sequence[str] | None = None,
        context: AccessContext | None = None,
        principal: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {
            "dataset": dataset,
            "action": action,
            "fields": list(fields) if fields is not None else None,
            "context": (context or AccessContext()).model_dump(mode="json", exclude_none=True),
            "principal": principal,
        }
        out: dict[str, Any] = self.request("POST", "/policy/explain", json=body)
        return out

    # -- clean room ------------------------------------------------------------------------

    def cleanroom_query(self, query: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/cleanroom/queries", json=query)
        return out
