"""The one path protected data takes out of Bastion.

```
authenticate → decide → plan → record → open → transform → respond
```

* **authenticate**: ``deps.authenticate`` turns the bearer token into a Principal (401s are
  recorded as ``AuthFailure``).
* **decide / plan**: the policy engine gives each field a transform and the request its row
  filter; a presented grant is verified first. A ticket's row filter keeps the subjects of
  the open ticket the request names, as a ticketing service registered it (``[gateway]
  tickets = "registered"``), not the subjects the reader lists.
* **select**: the records asked for are resolved to vault record keys without decrypting
  anything; records of subjects outside the row filter are dropped; a grant's use is
  counted (against its ``max_uses``); the bulk counters of 28 CFR 202.205 are checked and
  reserved.
* **record**: an ``AccessDecision`` naming every released (record, field, transform) is
  durably appended to the ledger (a large release: several entries, each under 64 KiB, in
  ONE commit). If that fails, nothing is opened.
* **open**: the vault opens exactly the recorded plan's sealed values: each chunk's
  ``RecordedPlan`` is bound to its entry, which the vault's check re-hashes against the
  receipt and requires to list every value opened. Public values and pseudonym tokens come
  from the vault's clear columns, so a pseudonymized field is never decrypted at all.
* **transform / respond**: each value takes its planned form; the response carries the
  receipt (ledger index and leaf hash).

Every refusal on the way (bad input, unknown names, a rejected grant, a policy denial, a bulk
threshold) is recorded too, and answers with the receipt of its entry.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from bastion.catalog import Classification, DatasetSpec, to_jsonable
from bastion.clock import iso
from bastion.errors import BastionError, InputError, IntegrityError
from bastion.events import AccessDecision, Actor, Export, RequestRejected, encode_event
from bastion.gateway.auth import AuthError, Principal, bearer_token
from bastion.gateway.errors import ApiError, ReceiptOut
from bastion.gateway.models import AccessContext, Filter
from bastion.gateway.public_names import (
    client_request_id,
    public_dataset,
    public_field,
    public_id,
    public_ticket,
    scrub,
)
from bastion.gateway.runtime import Runtime
from bastion.home import FreeTextMode
from bastion.ledger.api import Receipt
from bastion.policy import (
    AccessPlan,
    AccessRequestSpec,
    Action,
    ApprovalRefused,
    BulkThresholdExceeded,
    GrantRejected,
    GrantScope,
    JustificationType,
    PlanRequest,
    PseudonymUnavailable,
    RowFilterKind,
    TicketRefused,
    Transform,
    apply_transform,
)
from bastion.policy.thresholds import usage_for
from bastion.vault import ReadPlan, RecordedPlan

log = logging.getLogger(__name__)

MAX_FILTER_VALUES = 100


def new_request_id(request: Request) -> str:
    """The caller's ``X-Request-Id`` when it is an id that cannot carry text (a UUID or hex
    digits; it makes grant uses single-shot), else a fresh one: the log is public, and a
    header can hold anything (see ``public_names``)."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is not None:
        return rid
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    mode: FreeTextMode = runtime.public_text.mode if runtime is not None else "commit"
    rid = client_request_id(request.headers.get("x-request-id"), mode)
    request.state.request_id = rid
    return rid


def receipt_out(receipt: Receipt) -> ReceiptOut:
    return ReceiptOut(index=receipt.index, leaf_hash=receipt.leaf_hash.hex())


def endpoint_of(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', '<unmatched>')}"


# ---------------------------------------------------------------------------- recording


def record(rt: Runtime, events: Sequence[BaseModel]) -> list[Receipt]:
    """Durably append events; any failure becomes a 503 and nothing is released."""
    return [receipt for receipt, _entry in record_entries(rt, events)]


def record_entries(rt: Runtime, events: Sequence[BaseModel]) -> list[tuple[Receipt, bytes]]:
    """Durably append events; each receipt comes with the exact entry bytes it covers (what
    ``RecordedPlan.bind`` checks). Any failure becomes a 503 and nothing is released."""
    import time

    start = time.perf_counter()
    try:
        # Encoded once here (canonical JSON of a bulk entry costs milliseconds): the same
        # bytes are appended and later checked against the receipt's leaf hash.
        entries = [encode_event(e) for e in events]  # type: ignore[arg-type]
        receipts = list(rt.writer.append_entries(entries))
        if len(receipts) != len(entries):
            raise RuntimeError("the ledger returned a receipt count that does not match")
    except Exception as exc:
        rt.metrics.ledger_failures.inc()
        log.error("ledger append failed: %s", type(exc).__name__)
        raise ApiError(
            503,
            "ledger-unavailable",
            "the ledger could not record this request, so nothing was released",
        ) from None
    rt.metrics.ledger_append.observe(time.perf_counter() - start)
    return list(zip(receipts, entries, strict=True))


def reject(
    rt: Runtime,
    actor: Actor,
    *,
    request_id: str,
    endpoint: str,
    status: int,
    kind: str,
    message: str,
    dataset: str | None = None,
    field: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ApiError:
    """Record a refused request (nothing released) and return the error to raise.

    The caller gets ``message`` as it is; the log is public, so a dataset or field name the
    catalog (or the API schema) does not declare is typed text there: a keyed commitment by
    default, also where the message quotes it."""
    rt.metrics.input_errors.labels(kind).inc()
    shown_dataset = public_dataset(rt, dataset[:128] if dataset else None)
    shown_field = public_field(rt, field[:128] if field else None)
    typed = {
        raw: shown
        for raw, shown in ((dataset, shown_dataset), (field, shown_field))
        if raw and shown and raw[:128] != shown
    }
    event = RequestRejected(
        actor=actor,
        reason=scrub(message, typed)[:4096],
        at=iso(rt.clock.now()),
        request_id=request_id,
        endpoint=endpoint[:256],
        status=status,
        error=kind,
        dataset=shown_dataset,
        field=shown_field,
    )
    (receipt,) = record(rt, [event])
    err = ApiError(status, kind, message, detail=detail)
    err.receipt = receipt_out(receipt)
    err.request_id = request_id
    return err


def reject_request(
    rt: Runtime,
    principal: Principal,
    request: Request,
    *,
    kind: str,
    message: str,
    status: int = 422,
    dataset: str | None = None,
    field: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ApiError:
    """``reject`` for a route, which has the request at hand."""
    return reject(
        rt,
        principal.actor(),
        request_id=new_request_id(request),
        endpoint=endpoint_of(request),
        status=status,
        kind=kind,
        message=message,
        dataset=dataset,
        field=field,
        detail=detail,
    )


def input_error_kind(exc: InputError) -> tuple[int, str]:
    message = str(exc)
    if "unknown dataset" in message:
        return 404, "unknown-dataset"
    if exc.field is not None and "no such field" in message:
        return 422, "unknown-field"
    return 422, "invalid-input"


def _validation_kind(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """Classify FastAPI's validation errors: (status, kind, field path)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    path = ".".join(p for p in loc if p not in ("body",)) or None
    etype = str(first.get("type", ""))
    if etype == "json_invalid":
        return 400, "malformed-json", None
    if "page_size" in loc and etype in ("less_than_equal", "greater_than_equal"):
        return 422, "page-size-out-of-range", "page_size"
    if "filters" in loc:
        return 422, "invalid-filter", path
    return 422, "invalid-input", path


async def reject_invalid_request(
    rt: Runtime, request: Request, exc: RequestValidationError
) -> ApiError:
    """A body or parameter that failed validation: record it, answer 400/422.

    FastAPI parses the JSON body before it runs dependencies, so a malformed body may arrive
    here unauthenticated: the token is checked now, and a bad token is a recorded 401.
    """
    errors = list(exc.errors())
    status, kind, path = _validation_kind(errors)
    principal: Principal | None = getattr(request.state, "principal", None)
    rid = new_request_id(request)
    if principal is None:
        from bastion.gateway.deps import record_auth_failure

        token = bearer_token(request.headers.get("authorization"))
        try:
            principal = rt.verifier.verify(token)
        except AuthError as auth_exc:
            return await run_in_threadpool(
                record_auth_failure, rt, request, auth_exc, endpoint_of(request)
            )
    first = errors[0] if errors else {}
    # Bounded here, not after: the path may be typed text (a key the schema does not know),
    # which reject() must find whole in the message to keep it out of the log.
    path = path[:128] if path else None
    msg = str(first.get("msg", "invalid request"))[:300]
    where = f" at {path}" if path else ""
    message = "the request body is not valid JSON" if kind == "malformed-json" else f"{msg}{where}"
    dataset = request.path_params.get("dataset")
    actor = principal.actor()
    return await run_in_threadpool(
        lambda: reject(
            rt,
            actor,
            request_id=rid,
            endpoint=endpoint_of(request),
            status=status,
            kind=kind,
            message=message[:500],
            dataset=str(dataset) if dataset else None,
            field=path,
        )
    )


async def reject_model_error(rt: Runtime, request: Request, exc: ValidationError) -> ApiError:
    """A value refused by a part's model after the API schema accepted it: a recorded 422."""
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    path = ".".join(str(p) for p in first.get("loc", ()))[:128] or None
    message = f"{first.get('msg', 'invalid value')}"[:300] + (f" at {path}" if path else "")
    principal: Principal | None = getattr(request.state, "principal", None)
    actor = principal.actor() if principal is not None else Actor(id="anonymous")
    rid = new_request_id(request)
    dataset = request.path_params.get("dataset")
    return await run_in_threadpool(
        lambda: reject(
            rt,
            actor,
            request_id=rid,
            endpoint=endpoint_of(request),
            status=422,
            kind="invalid-input",
            message=message[:500],
            dataset=str(dataset) if dataset else None,
            field=path,
        )
    )


ENTRY_BUDGET = 40_000  # bytes of record keys and subject refs per ledger entry (max 64 KiB)


def chunk_records(
    keys: Sequence[str], subjects: Mapping[str, str], subject_ref: Any
) -> list[list[str]]:
    """Split released records so each recording entry stays well under the 64 KiB limit."""
    chunks: list[list[str]] = [[]]
    size = 0
    for key in keys:
        cost = len(key) + len(subject_ref(subjects[key])) + 8
        if chunks[-1] and size + cost > ENTRY_BUDGET:
            chunks.append([])
            size = 0
        chunks[-1].append(key)
        size += cost
    return chunks


# ---------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """Which records a request is about. Exactly one way of choosing is used."""

    record_ids: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    page_size: int = 0
    page_token: str | None = None
    listing: bool = False


def encode_page_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(b"after\x00" + last_key.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InputError("page_token is not one this gateway issued", field="page_token") from None
    prefix, sep, key = raw.partition(b"\x00")
    if prefix != b"after" or not sep:
        raise InputError("page_token is not one this gateway issued", field="page_token")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise InputError("page_token is not one this gateway issued", field="page_token") from None


@dataclass(frozen=True)
class Addressing:
    """Whether a request may name records by raw identifiers (else by pseudonym tokens)."""

    raw_record_ids: bool
    raw_subject_ids: bool


RAW_IDS = Addressing(raw_record_ids=True, raw_subject_ids=True)


@dataclass(frozen=True)
class Resolved:
    """Records resolved to vault keys, with each one's subject token; ``missing`` are the
    requested ids that do not exist (or belong to a shredded subject)."""

    keys: list[str]
    subjects: dict[str, str]
    missing: list[str]
    next_page_token: str | None = None


def _filter_values(f: Filter) -> list[str]:
    if f.op == "eq":
        if not isinstance(f.value, str):
            raise InputError("'eq' takes one string value", field=f"filters.{f.field}")
        return [f.value]
    if not isinstance(f.value, list) or not f.value:
        raise InputError("'in' takes a non-empty list of strings", field=f"filters.{f.field}")
    if len(f.value) > MAX_FILTER_VALUES:
        raise InputError(
            f"'in' takes at most {MAX_FILTER_VALUES} values", field=f"filters.{f.field}"
        )
    return list(f.value)


class Gate:
    """The request path for reads, batch reads, searches and exports."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # -- records ---------------------------------------------------------------------------

    def resolve(
        self, spec: DatasetSpec, selection: Selection, addressing: Addressing = RAW_IDS
    ) -> Resolved:
        vault, lookup = self.rt.vault, self.rt.lookup
        if selection.record_ids:
            ids = list(dict.fromkeys(selection.record_ids))
            if not addressing.raw_record_ids:
                # Pseudonym tokens only: a token names a record key, and nothing says whether
                # a raw id (an account) exists, so there is no `missing` to report.
                live = lookup.live_subjects(spec.name, ids)
                return Resolved([k for k in ids if k in live], live, [])
            # One read transaction in the vault: ids -> keys -> live subjects.
            by_id = lookup.resolve(spec.name, ids)
            keys = [by_id[rid][0] for rid in ids if rid in by_id]
            missing = [rid for rid in ids if rid not in by_id]
            return Resolved(keys, dict(by_id.values()), missing)
        # Search / export: structured filters on identifying keys only.
        candidates: list[str] | None = None
        for f in selection.filters:
            values = _filter_values(f)
            if f.field == "subject" and not addressing.raw_subject_ids:
                found = vault.records_of_subject_tokens(values, spec.name, limit=100_000)
            elif f.field == "subject":
                found = []
                for subject in values:
                    found += [
                        r.record for r in vault.subject_records(subject, spec.name, limit=100_000)
                    ]
            elif not addressing.raw_record_ids:
                found = list(values)  # record keys (tokens); unknown ones match nothing
            else:
                found = [k for v in values if (k := vault.record_key(spec.name, v)) is not None]
            found = sorted(set(found))
            candidates = found if candidates is None else sorted(set(candidates) & set(found))
        after = decode_page_token(selection.page_token) if selection.page_token else None
        size = selection.page_size
        if candidates is None:
            page = vault.list_records(spec.name, after=after, limit=size + 1)
        else:
            page = [k for k in candidates if after is None or k > after][: size + 1]
        more = len(page) > size
        page = page[:size]
        subjects = lookup.live_subjects(spec.name, page)
        token = encode_page_token(page[-1]) if more and page else None
        return Resolved([k for k in page if k in subjects], subjects, [], token)

    def addressing(
        self, principal: Principal, spec: DatasetSpec, action: Action, request: PlanRequest
    ) -> Addressing:
        """How this principal may name records: by raw record and subject ids only if policy
        lets it see those identifiers in clear. A principal that sees them as pseudonyms (or not
        at all) names records by the tokens it was given; otherwise a batch of raw ids would
        map each account to its pseudonym, and `missing` would say which accounts exist."""
        names = tuple(dict.fromkeys((spec.record_id, spec.subject_key)))
        plan = self.rt.engine().plan(
            principal,
            PlanRequest(
                dataset=spec.name,
                action=action,
                fields=names,
                purpose=request.purpose,
                justification=request.justification,
                ticket=request.ticket,
                ticket_subjects=request.ticket_subjects,
                subject_count=request.subject_count,
            ),
        )

        def raw_ok(name: str) -> bool:
            if not spec.field(name).pseudonymize:
                return True  # not an identifier of a person
            return plan.field(name).transform is Transform.CLEAR

        return Addressing(
            raw_record_ids=raw_ok(spec.record_id), raw_subject_ids=raw_ok(spec.subject_key)
        )

    # -- the path --------------------------------------------------------------------------

    def _grant(
        self,
        principal: Principal,
        action: Action,
        dataset: str,
        context: AccessContext,
        request_id: str,
    ) -> GrantScope | None:
        if context.grant_token is None and context.grant_id is None:
            return None
        approvals = self.rt.approvals
        token = context.grant_token
        if token is None:
            assert context.grant_id is not None
            token = approvals.grant_token(context.grant_id)
        # Checked now; a use is counted only when something is released under the grant.
        return approvals.verify(token, principal, dataset=dataset, action=action, fields=None)

    def ticket_subjects(
        self, principal: Principal, context: AccessContext
    ) -> tuple[tuple[str, ...], TicketRefused | None]:
        """The subjects a ``ticket_subjects`` row filter keeps, and why the ticket cannot be
        used (if it cannot). Registered tickets (the default): the subjects of the open ticket
        the request names, assigned to this reader if it has assignees; the reader's own
        ``ticket_subjects`` may only narrow them. ``tickets = "caller"``: the reader's."""
        if self.rt.config.tickets == "caller":
            return tuple(context.ticket_subjects), None
        if not context.ticket:
            return (), None
        try:
            _ticket, subjects = self.rt.tickets.resolve(
                context.ticket, principal.id, context.ticket_subjects
            )
        except TicketRefused as exc:
            return (), exc
        return subjects, None

    def release(
        self,
        principal: Principal,
        *,
        action: Action,
        dataset: str,
        fields: Sequence[str] | None,
        context: AccessContext,
        selection: Selection,
        request_id: str,
        endpoint: str,
        destination: str | None = None,
    ) -> dict[str, Any]:
        rt = self.rt
        actor = principal.actor()

        def refuse(status: int, kind: str, message: str, **kw: Any) -> ApiError:
            return reject(
                rt,
                actor,
                request_id=request_id,
                endpoint=endpoint,
                status=status,
                kind=kind,
                message=message,
                **kw,
            )

        # Names first: an unknown dataset or field is bad input, not a policy question.
        try:
            spec = rt.catalog.dataset(dataset)
            if fields is not None:
                if not fields:
                    raise InputError("no fields requested", dataset=dataset, field="fields")
                if len(set(fields)) != len(fields):
                    raise InputError("fields repeat a name", dataset=dataset, field="fields")
                for name in fields:
                    spec.field(name)
        except InputError as exc:
            status, kind = input_error_kind(exc)
            raise refuse(status, kind, str(exc), dataset=dataset, field=exc.field) from None
        try:
            for f in selection.filters:
                _filter_values(f)
            if selection.page_token is not None:
                decode_page_token(selection.page_token)
        except InputError as exc:
            raise refuse(
                422, "invalid-filter", str(exc), dataset=dataset, field=exc.field
            ) from None
        engine = rt.engine()
        justification = (
            JustificationType(context.justification.type) if context.justification else None
        )
        # The log is public: the purpose and the justification detail are typed text, so they
        # go in as keyed commitments by default (rt.public_text; the text kept in the
        # database). The justification type is enumerated: clear. A ticket is in clear only
        # when it is a ticket id (SUP-1042); anything else given as one (a name, a subject id)
        # is typed text too.
        public = rt.public_text
        purpose = public.publish(context.purpose) if context.purpose else None
        detail = public.publish(context.justification.detail) if context.justification else None
        base_event: dict[str, Any] = {
            "actor": actor,
            "request_id": request_id,
            "action": action.value,
            "dataset": spec.name,
            "purpose": purpose,
            "justification_type": justification.value if justification else None,
            "justification_detail": detail,
            "ticket": public_ticket(rt, context.ticket),
            "policy_sha256": engine.sha256,
        }

        def deny(
            status: int, kind: str, reason: str, *, plan: AccessPlan | None = None, **extra: Any
        ) -> ApiError:
            event = AccessDecision(
                **base_event,
                reason=reason[:4096],
                at=iso(rt.clock.now()),
                decision="deny",
                policies=list(plan.policies) if plan else [],
                denied_reason=reason[:1024],
                # The subjects an attempt named, so they see refused attempts on their data too.
                subjects=self._attempted_subjects(spec, selection),
                **extra,
            )
            (receipt,) = record(rt, [event])
            rt.metrics.decisions.labels(action.value, "deny").inc()
            detail: dict[str, Any] = {}
            if plan is not None:
                detail["plan"] = [f.to_json() for f in plan.fields]
                if plan.approval is not None:
                    detail["approval"] = plan.approval.to_json()
            err = ApiError(status, kind, reason, detail=detail or None)
            err.receipt = receipt_out(receipt)
            err.request_id = request_id
            return err

        # A presented grant is verified before deciding: its use is single-shot per request.
        try:
            grant = self._grant(principal, action, spec.name, context, request_id)
        except GrantRejected as exc:
            status = 409 if exc.kind == "replayed" else 403
            # The grant id as presented: one Bastion issued in clear, anything else as text.
            grant_id = public_id(rt, context.grant_id)
            typed = {context.grant_id: grant_id} if context.grant_id and grant_id else {}
            reason = scrub(str(exc), typed)
            raise deny(status, f"grant-{exc.kind}", reason, grant_id=grant_id) from None
        ticket_subjects, ticket_refused = self.ticket_subjects(principal, context)
        plan_request = PlanRequest(
            dataset=spec.name,
            action=action,
            fields=tuple(fields) if fields is not None else None,
            purpose=context.purpose,
            justification=justification,
            ticket=context.ticket or "",
            ticket_subjects=ticket_subjects,
            subject_count=len(selection.record_ids),
        )
        try:
            plan = engine.plan(principal, plan_request, grant=grant)
        except InputError as exc:
            status, kind = input_error_kind(exc)
            raise refuse(status, kind, str(exc), dataset=dataset, field=exc.field) from None
        grant_fields: dict[str, Any] = (
            {"grant_id": grant.grant_id, "approval_ids": [grant.grant_id]} if grant else {}
        )
        if grant is not None and grant.break_glass:
            grant_fields["break_glass"] = True

        # A field released under a ticket's row filter needs the ticket to be one it may use
        # (registered, open, assigned to this reader): else it is refused, and recorded.
        # The ticket as named goes to the public log as the event's own ticket field does.
        if ticket_refused is not None and _needs_ticket(plan):
            shown = public_ticket(rt, context.ticket)
            typed = {context.ticket: shown} if context.ticket and shown else {}
            reason = scrub(ticket_refused.detail, typed)
            raise deny(403, ticket_refused.kind, reason, plan=plan, **grant_fields)

        access_request_id: str | None = None
        if plan.needs_approval and context.justification is not None and grant is None:
            access_request_id = self._request_approval(principal, plan, context, ticket_subjects)

        if not plan.allowed:
            extra = {"access_request_id": access_request_id} if access_request_id else {}
            kind = "approval-required" if plan.needs_approval else "denied"
            reason = plan.denied_reason or "denied by policy"
            if plan.needs_approval:
                reason = f"needs {plan.approval.approvers if plan.approval else 2} approvers: " + (
                    f"access request {access_request_id} opened"
                    if access_request_id
                    else "ask with POST /access-requests and a justification"
                )
            err = deny(403, kind, reason, plan=plan, **grant_fields, **extra)
            if access_request_id and err.detail is not None:
                err.detail["access_request_id"] = access_request_id
            raise err

        # Select the records, keep those the row filter allows.
        try:
            addressing = self.addressing(principal, spec, action, plan_request)
            resolved = self.resolve(spec, selection, addressing)
        except InputError as exc:
            raise refuse(
                422, "invalid-filter", str(exc), dataset=dataset, field=exc.field
            ) from None
        keys = resolved.keys
        filtered_out: list[str] = []
        allowed_subjects = plan.allowed_subjects
        if allowed_subjects is not None:
            allowed_tokens = set(rt.lookup.tokens(sorted(allowed_subjects)).values())
            filtered_out = [k for k in keys if resolved.subjects[k] not in allowed_tokens]
            keys = [k for k in keys if resolved.subjects[k] in allowed_tokens]
        released = plan.released
        subject_tokens = list(dict.fromkeys(resolved.subjects[k] for k in keys))

        # One use of the grant: checked against its max_uses and counted in one transaction
        # (on any gateway of the database), only when records are about to leave under it.
        if grant is not None and keys and released:
            try:
                rt.approvals.use(grant, request_id)
            except GrantRejected as exc:
                status = 409 if exc.kind == "replayed" else 403
                raise deny(
                    status, f"grant-{exc.kind}", str(exc), plan=plan, **grant_fields
                ) from None

        # 28 CFR 202.205 bulk thresholds, per employer and per principal.
        if keys and released:
            usage = usage_for(plan, subject_tokens)
            if usage:
                try:
                    rt.bulk_batcher.reserve(principal.id, principal.employer or "", usage)
                except BulkThresholdExceeded as exc:
                    rt.metrics.bulk_refusals.labels(exc.category.value).inc()
                    raise deny(429, "bulk-threshold", str(exc), plan=plan, **grant_fields) from None

        # Record BEFORE opening anything: one AccessDecision per chunk of records (a ledger
        # entry holds at most 64 KiB), all appended in ONE commit.
        chunks = chunk_records(keys, resolved.subjects, rt.subject_ref) if released else [[]]
        decisions: list[BaseModel] = []
        at = iso(rt.clock.now())
        for chunk in chunks:
            tokens = dict.fromkeys(resolved.subjects[k] for k in chunk)
            decisions.append(
                AccessDecision(
                    **base_event,
                    reason=(purpose or "access")[:4096],
                    at=at,
                    decision="allow",
                    policies=list(plan.policies),
                    subjects=[rt.subject_ref(t) for t in tokens],
                    released_fields={f: t.value for f, t in released.items()} if chunk else {},
                    released_records=list(chunk),
                    row_filter=plan.row_filter.kind.value if plan.row_filter else None,
                    access_request_id=access_request_id,
                    **grant_fields,
                )
            )
        events = list(decisions)
        if action is Action.EXPORT and destination:
            events.append(
                Export(
                    actor=actor,
                    reason=(purpose or "export")[:4096],
                    at=at,
                    dataset=spec.name,
                    # Where the caller said it goes: typed text (a commitment by default).
                    destination=public.publish(destination),
                    records=len(keys),
                    fields=list(released),
                )
            )
        recorded = record_entries(rt, events)
        receipts = [r for r, _entry in recorded]
        receipt = receipts[0]
        rt.metrics.decisions.labels(action.value, "allow").inc()

        values: dict[str, dict[str, Any]] = {}
        # Each chunk opens bound to the one entry that lists its records (zip stops before a
        # trailing Export entry).
        for chunk, chunk_recorded in zip(chunks, recorded, strict=False):
            if chunk:
                values.update(self._open(spec, plan, chunk, chunk_recorded))
        for transform in released.values():
            rt.metrics.released_values.labels(transform.value).inc(len(keys))
        out: dict[str, Any] = {
            "request_id": request_id,
            "dataset": spec.name,
            "decision": "allow",
            "receipt": {"index": receipt.index, "leaf_hash": receipt.leaf_hash.hex()},
            "receipts": [
                {"index": r.index, "leaf_hash": r.leaf_hash.hex()} for r in receipts[: len(chunks)]
            ],
            "plan": [
                {"field": f.field, "transform": f.transform.value, "policies": list(f.policies)}
                for f in plan.fields
            ],
            "records": [{"record_id": k, "values": values.get(k, {})} for k in keys],
            "missing": resolved.missing + filtered_out,
            "next_page_token": resolved.next_page_token,
            "grant_id": grant.grant_id if grant else None,
        }
        if access_request_id:
            out["access_request_id"] = access_request_id
        return out

    def _attempted_subjects(self, spec: DatasetSpec, selection: Selection) -> list[str]:
        """Keyed subject hashes of the records a refused request named (ids only, no search)."""
        if not selection.record_ids:
            return []
        try:
            resolved = self.resolve(spec, Selection(record_ids=selection.record_ids))
        except BastionError:
            return []
        tokens = dict.fromkeys(resolved.subjects[k] for k in resolved.keys)
        return [self.rt.subject_ref(t) for t in tokens]

    def _request_approval(
        self,
        principal: Principal,
        plan: AccessPlan,
        context: AccessContext,
        subjects: Sequence[str],
    ) -> str | None:
        """Open an access request for the fields that wait for approvers, for the subjects
        of the request's ticket (a request naming none is refused: it would be for every
        subject, which is only ever asked for explicitly)."""
        assert context.justification is not None and plan.approval is not None
        try:
            outcome = self.rt.approvals.request(
                principal,
                AccessRequestSpec(
                    dataset=plan.dataset,
                    action=plan.action,
                    fields=plan.approval.fields,
                    subjects=tuple(dict.fromkeys(subjects)),
                    justification_type=JustificationType(context.justification.type),
                    justification_detail=context.justification.detail,
                    ticket=context.ticket or "",
                    purpose=context.purpose,
                ),
            )
        except (ApprovalRefused, InputError):
            # The request itself is refused (and recorded by the approvals service); the
            # access decision that follows still records the denial.
            return None
        return outcome.request.id

    def _open(
        self,
        spec: DatasetSpec,
        plan: AccessPlan,
        keys: Sequence[str],
        recorded: tuple[Receipt, bytes],
    ) -> dict[str, dict[str, Any]]:
        """Open the recorded plan's values and put each in its planned form.

        The read plan is bound to the ledger entry that recorded it: the vault refuses it
        unless that entry (checked against its receipt) lists every value opened."""
        rt = self.rt
        released = plan.released
        clear_side: list[str] = []  # public values and pseudonym tokens: no decryption
        sealed_side: list[str] = []
        for name, transform in released.items():
            f = spec.field(name)
            pseudonym = transform is Transform.PSEUDONYM
            if (f.classification is Classification.PUBLIC and not pseudonym) or (
                f.pseudonymize and pseudonym
            ):
                clear_side.append(name)
            else:
                sealed_side.append(name)
        out: dict[str, dict[str, Any]] = {k: {} for k in keys}
        if sealed_side:
            read_plan = ReadPlan.of(spec.name, ((k, f) for k in keys for f in sealed_side))
            try:
                bound = RecordedPlan.bind(read_plan, *recorded)
            except InputError:
                # The gateway's own entry does not list what it is about to open: a bug here,
                # never the caller's doing. Refuse (500) rather than open an unrecorded value.
                log.error("a recorded plan did not match its ledger entry; nothing opened")
                raise IntegrityError(
                    "the ledger entry does not list every value to open; nothing was released"
                ) from None
            opened = rt.vault.open(bound)
            pseudonymize = self._pseudonymizer()
            for ref, value in opened.items():
                fp = plan.field(ref.field)
                try:
                    shaped = apply_transform(
                        fp.transform, fp.kind, value, pseudonymize=pseudonymize
                    )
                except PseudonymUnavailable:
                    shaped = None
                out[ref.record][ref.field] = to_jsonable(shaped)
        if clear_side:
            clear = rt.vault.clear_values(spec.name, keys, clear_side)
            for key in keys:
                row = clear.get(key, {})
                for name in clear_side:
                    fp = plan.field(name)
                    stored = row.get(name)
                    if fp.transform is Transform.PSEUDONYM or fp.transform is Transform.CLEAR:
                        out[key][name] = stored
                    else:
                        out[key][name] = to_jsonable(apply_transform(fp.transform, fp.kind, stored))
        return out

    def _pseudonymizer(self) -> Any:
        vault = self.rt.vault

        def pseudonymize(value: Any) -> str:
            token = vault.pseudonym_of(str(value))
            if token is None:
                raise PseudonymUnavailable("no pseudonym exists for this value")
            return token

        return pseudonymize


def _needs_ticket(plan: AccessPlan) -> bool:
    """Whether a field is released under a ticket's row filter."""
    return any(RowFilterKind.TICKET_SUBJECTS in f.row_filters for f in plan.fields if f.released)


def subjects_of(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def as_api_error(exc: BastionError) -> ApiError:
    from bastion.gateway.errors import status_for

    status, kind = status_for(exc)
    return ApiError(status, kind, str(exc))
