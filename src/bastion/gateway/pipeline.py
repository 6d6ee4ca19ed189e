"""The one path protected data takes out of Bastion.

```
authenticate → decide → plan → record → open → transform → respond
```

``Gate.release`` runs these stages in this order, each a method below that takes and gives
typed values:

* **authenticate** (``deps.authenticate``, before the route runs): the bearer token becomes
  a Principal; a refused token is recorded as ``AuthFailure``. The gate then checks the names
  a request uses (``check``): an unknown dataset or field is bad input, recorded, not a
  policy question.
* **decide** → :class:`Decision`: a presented grant is verified, the ticket resolved, and
  the policy engine gives each field a transform and the request its row filter. A ticket's
  row filter keeps the subjects of the open ticket the request names, as a ticketing service
  registered it (``[gateway] tickets = "registered"``), not the subjects the reader lists.
* **plan** → :class:`ReleasePlan`: the records asked for are resolved to vault record keys
  without decrypting anything; records of subjects outside the row filter are dropped; a
  grant's use is counted (against its ``max_uses``); what the bulk counters of 28 CFR
  202.205 will count is worked out; the records are split over ledger entries.
* **record** → :class:`Recorded`: an ``AccessDecision`` naming every released (record,
  field, transform) is durably appended to the ledger (a large release: several entries,
  each under 64 KiB, in ONE commit), and in that same commit the bulk counters are checked
  and counted (a side write of the commit). If either fails, nothing is opened.
* **open** → :class:`Opened`: the vault opens exactly the recorded plan's sealed values: each
  chunk's ``RecordedPlan`` is bound to its entry, which the vault's check re-hashes against
  the receipt and requires to list every value opened. Public values and pseudonym tokens
  come from the vault's clear columns, so a pseudonymized field is never decrypted at all.
* **transform** → values: each value takes its planned form (mask, generalize, pseudonym).
* **respond** → :class:`ReleaseOut`: the values with the receipts (ledger index, leaf hash).

Every refusal on the way (bad input, unknown names, a rejected grant, a policy denial, a bulk
threshold) is recorded too, and answers with the receipt of its entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bastion.catalog import Classification, DatasetSpec, SensitiveCategory, to_jsonable
from bastion.clock import iso
from bastion.errors import BastionError, InputError, IntegrityError
from bastion.events import AccessDecision, Actor, Export
from bastion.gateway import tracing
from bastion.gateway.auth import Principal
from bastion.gateway.errors import ApiError
from bastion.gateway.models import (
    AccessContext,
    FieldPlanOut,
    RecordOut,
    ReleaseOut,
)
from bastion.gateway.public_names import public_id, public_ticket, scrub
from bastion.gateway.recording import Counted, receipt_out, record, record_entries
from bastion.gateway.refusals import input_error_kind, reject
from bastion.gateway.runtime import Runtime
from bastion.gateway.selection import (
    Addressing,
    Resolved,
    Selection,
    check_selection,
    resolve,
)
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
from bastion.vault import OpenedValues, ReadPlan, RecordedPlan, StoredRecords

log = logging.getLogger(__name__)

ENTRY_BUDGET = 40_000  # bytes of record keys and subject refs per ledger entry (max 64 KiB)


def chunk_records(
    keys: Sequence[str], subjects: Mapping[str, str], subject_ref: Callable[[str], str]
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


# ------------------------------------------------------------------ values between stages


@dataclass(frozen=True)
class ReleaseRequest:
    """What a route asks of the gate: one read, a batch read, a search page or an export."""

    action: Action
    dataset: str
    fields: Sequence[str] | None
    context: AccessContext
    selection: Selection
    request_id: str
    endpoint: str
    destination: str | None = None


@dataclass(frozen=True)
class EventHeader:
    """What every ``AccessDecision`` of one request says about it. The log is public: the
    purpose and the justification detail are typed text, so they are keyed commitments by
    default (``rt.public_text``, the text kept in the database); the justification type is
    enumerated, so clear; a ticket is in clear only when it is a ticket id (SUP-1042)."""

    actor: Actor
    request_id: str
    action: str
    dataset: str
    purpose: str | None
    justification_type: str | None
    justification_detail: str | None
    ticket: str | None
    policy_sha256: str

    def fields(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "request_id": self.request_id,
            "action": self.action,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "justification_type": self.justification_type,
            "justification_detail": self.justification_detail,
            "ticket": self.ticket,
            "policy_sha256": self.policy_sha256,
        }


@dataclass(frozen=True)
class Checked:
    """A request whose names are known: its dataset, and what its entries will say."""

    request: ReleaseRequest
    spec: DatasetSpec
    header: EventHeader


@dataclass(frozen=True)
class Decision:
    """What policy decided: each field's transform and the row filter, under which grant."""

    checked: Checked
    plan: AccessPlan
    plan_request: PlanRequest
    grant: GrantScope | None
    access_request_id: str | None

    @property
    def grant_fields(self) -> dict[str, Any]:
        """What the entries say about the grant used, if one was."""
        grant = self.grant
        if grant is None:
            return {}
        out: dict[str, Any] = {"grant_id": grant.grant_id, "approval_ids": [grant.grant_id]}
        if grant.break_glass:
            out["break_glass"] = True
        return out


@dataclass(frozen=True)
class ReleasePlan:
    """Which records leave, and how they are split over ledger entries."""

    keys: list[str]
    subjects: dict[str, str]
    # Requested ids that are absent, then records the row filter kept back.
    missing: list[str]
    next_page_token: str | None
    chunks: list[list[str]]
    # The records' rows as the vault read them while selecting (the one read of
    # vault_records): clear values, and sealed ones that open only once recorded.
    stored: StoredRecords
    # The subjects (devices) the release counts per sensitive category (28 CFR 202.205).
    usage: dict[SensitiveCategory, list[str]]


@dataclass(frozen=True)
class Recorded:
    """The durable entries of a release: one per chunk (then an Export entry, if any), each
    receipt with the exact bytes it covers."""

    entries: list[tuple[Receipt, bytes]]
    decisions: int  # how many of them are the chunks' AccessDecisions

    @property
    def receipts(self) -> list[Receipt]:
        return [receipt for receipt, _entry in self.entries]


@dataclass(frozen=True)
class Opened:
    """The released values as stored: sealed ones opened (one set per recorded chunk), clear
    ones (public values, pseudonym tokens) read from the vault's clear column."""

    sealed: list[OpenedValues]
    clear: dict[str, dict[str, object]]
    clear_fields: list[str]


def sides(spec: DatasetSpec, released: Mapping[str, Transform]) -> tuple[list[str], list[str]]:
    """Released fields as (clear side, sealed side): a public value released as it is, or a
    pseudonymized identifier released as its token, is stored in clear and never decrypted."""
    clear_side: list[str] = []
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
    return clear_side, sealed_side


class Gate:
    """The request path for reads, batch reads, searches and exports."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def release(self, principal: Principal, request: ReleaseRequest) -> ReleaseOut:
        # One span per stage; its attributes are counts, enumerations, catalog names and
        # ledger indexes only (``tracing``).
        with tracing.span(tracing.RELEASE) as root:
            tracing.attributes(root, action=request.action.value)
            with tracing.span(tracing.stage("check")):
                checked = self.check(principal, request)
            tracing.attributes(root, dataset=checked.spec.name)
            with tracing.span(tracing.stage("decide")) as span:
                decision = self.decide(principal, checked)
                tracing.attributes(span, decision="allow", fields=len(decision.plan.released))
            with tracing.span(tracing.stage("plan")) as span:
                planned = self.plan(principal, decision)
                tracing.attributes(
                    span,
                    records=len(planned.keys),
                    missing=len(planned.missing),
                    ledger_entries=len(planned.chunks),
                )
            with tracing.span(tracing.stage("record")) as span:
                recorded = self.record(principal, decision, planned)
                tracing.attributes(
                    span,
                    ledger_index=recorded.entries[0][0].index,
                    ledger_entries=len(recorded.entries),
                )
            with tracing.span(tracing.stage("open")) as span:
                opened = self.open(decision, planned, recorded)
                tracing.attributes(span, values=sum(map(len, opened.sealed)))
            with tracing.span(tracing.stage("transform")) as span:
                values = self.transform(decision, opened, planned.keys)
                tracing.attributes(span, values=sum(map(len, values.values())))
            with tracing.span(tracing.stage("respond")) as span:
                out = self.respond(decision, planned, recorded, values)
                tracing.attributes(span, records=len(out.records), status=200)
            tracing.attributes(root, decision="allow", status=200)
            return out

    # -- check: names first ----------------------------------------------------------------

    def check(self, principal: Principal, request: ReleaseRequest) -> Checked:
        """An unknown dataset or field, or a malformed filter, is bad input (recorded), not
        a policy question."""
        rt, fields = self.rt, request.fields
        try:
            spec = rt.catalog.dataset(request.dataset)
            if fields is not None:
                if not fields:
                    raise InputError("no fields requested", dataset=spec.name, field="fields")
                if len(set(fields)) != len(fields):
                    raise InputError("fields repeat a name", dataset=spec.name, field="fields")
                for name in fields:
                    spec.field(name)
        except InputError as exc:
            status, kind = input_error_kind(exc)
            raise self._invalid(principal, request, status, kind, exc) from None
        try:
            check_selection(request.selection)
        except InputError as exc:
            raise self._invalid(principal, request, 422, "invalid-filter", exc) from None
        context = request.context
        public = rt.public_text
        justification = context.justification
        header = EventHeader(
            actor=principal.actor(),
            request_id=request.request_id,
            action=request.action.value,
            dataset=spec.name,
            purpose=public.publish(context.purpose) if context.purpose else None,
            justification_type=justification.type if justification else None,
            justification_detail=public.publish(justification.detail) if justification else None,
            ticket=public_ticket(rt, context.ticket),
            policy_sha256=rt.engine().sha256,
        )
        return Checked(request, spec, header)

    def _invalid(
        self, principal: Principal, request: ReleaseRequest, status: int, kind: str, exc: InputError
    ) -> ApiError:
        return reject(
            self.rt,
            principal.actor(),
            request_id=request.request_id,
            endpoint=request.endpoint,
            status=status,
            kind=kind,
            message=str(exc),
            dataset=request.dataset,
            field=exc.field,
        )

    # -- decide ----------------------------------------------------------------------------

    def decide(self, principal: Principal, checked: Checked) -> Decision:
        """Verify a presented grant, resolve the ticket, ask policy; refuse (recorded) what
        policy does not allow."""
        rt, request, spec = self.rt, checked.request, checked.spec
        context = request.context
        # A presented grant is verified before deciding: its use is single-shot per request.
        try:
            grant = self._grant(principal, request.action, spec.name, context)
        except GrantRejected as exc:
            status = 409 if exc.kind == "replayed" else 403
            # The grant id as presented: one Bastion issued in clear, anything else as text.
            grant_id = public_id(rt, context.grant_id)
            typed = {context.grant_id: grant_id} if context.grant_id and grant_id else {}
            reason = scrub(str(exc), typed)
            raise self._deny(
                checked, status, f"grant-{exc.kind}", reason, grant_id=grant_id
            ) from None
        ticket_subjects, ticket_refused = self.ticket_subjects(principal, context)
        fields = request.fields
        plan_request = PlanRequest(
            dataset=spec.name,
            action=request.action,
            fields=tuple(fields) if fields is not None else None,
            purpose=context.purpose,
            justification=(
                JustificationType(context.justification.type) if context.justification else None
            ),
            ticket=context.ticket or "",
            ticket_subjects=ticket_subjects,
            subject_count=len(request.selection.record_ids),
        )
        try:
            plan = rt.engine().plan(principal, plan_request, grant=grant)
        except InputError as exc:
            status, kind = input_error_kind(exc)
            raise self._invalid(principal, request, status, kind, exc) from None
        decision = Decision(checked, plan, plan_request, grant, None)

        # A field released under a ticket's row filter needs the ticket to be one it may use
        # (registered, open, assigned to this reader): else it is refused, and recorded.
        # The ticket as named goes to the public log as the event's own ticket field does.
        if ticket_refused is not None and _needs_ticket(plan):
            shown = public_ticket(rt, context.ticket)
            typed = {context.ticket: shown} if context.ticket and shown else {}
            reason = scrub(ticket_refused.detail, typed)
            raise self._deny_decided(decision, 403, ticket_refused.kind, reason)

        access_request_id: str | None = None
        if plan.needs_approval and context.justification is not None and grant is None:
            access_request_id = self._request_approval(principal, plan, context, ticket_subjects)
        decision = Decision(checked, plan, plan_request, grant, access_request_id)

        if not plan.allowed:
            kind = "approval-required" if plan.needs_approval else "denied"
            reason = plan.denied_reason or "denied by policy"
            if plan.needs_approval:
                reason = f"needs {plan.approval.approvers if plan.approval else 2} approvers: " + (
                    f"access request {access_request_id} opened"
                    if access_request_id
                    else "ask with POST /access-requests and a justification"
                )
            extra = {"access_request_id": access_request_id} if access_request_id else {}
            err = self._deny_decided(decision, 403, kind, reason, **extra)
            if access_request_id and err.detail is not None:
                err.detail["access_request_id"] = access_request_id
            raise err
        return decision

    def _grant(
        self, principal: Principal, action: Action, dataset: str, context: AccessContext
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

    # -- denials ---------------------------------------------------------------------------

    def _deny_decided(
        self, decision: Decision, status: int, kind: str, reason: str, **extra: Any
    ) -> ApiError:
        """``_deny`` once policy has decided: the entry names the plan's policies and the
        grant presented."""
        return self._deny(
            decision.checked,
            status,
            kind,
            reason,
            plan=decision.plan,
            **decision.grant_fields,
            **extra,
        )

    def _deny(
        self,
        checked: Checked,
        status: int,
        kind: str,
        reason: str,
        *,
        plan: AccessPlan | None = None,
        **extra: Any,
    ) -> ApiError:
        """Record a denial (an ``AccessDecision`` that releases nothing) and return the error
        to raise."""
        rt = self.rt
        event = AccessDecision(
            **checked.header.fields(),
            reason=reason[:4096],
            at=iso(rt.clock.now()),
            decision="deny",
            policies=list(plan.policies) if plan else [],
            denied_reason=reason[:1024],
            # The subjects an attempt named, so they see refused attempts on their data too.
            subjects=self._attempted_subjects(checked),
            **extra,
        )
        (receipt,) = record(rt, [event])
        rt.metrics.decisions.labels(checked.header.action, "deny").inc()
        tracing.annotate(decision="deny", ledger_index=receipt.index)
        detail: dict[str, Any] = {}
        if plan is not None:
            detail["plan"] = [f.to_json() for f in plan.fields]
            if plan.approval is not None:
                detail["approval"] = plan.approval.to_json()
        err = ApiError(status, kind, reason, detail=detail or None)
        err.receipt = receipt_out(receipt)
        err.request_id = checked.request.request_id
        return err

    def _attempted_subjects(self, checked: Checked) -> list[str]:
        """Keyed subject hashes of the records a refused request named (ids only, no search)."""
        record_ids = checked.request.selection.record_ids
        if not record_ids:
            return []
        rt = self.rt
        try:
            resolved = resolve(rt.vault, rt.lookup, checked.spec, Selection(record_ids=record_ids))
        except BastionError:
            return []
        tokens = dict.fromkeys(resolved.subjects[k] for k in resolved.keys)
        return [rt.subject_ref(t) for t in tokens]

    # -- plan: which records, in which entries ---------------------------------------------

    def plan(self, principal: Principal, decision: Decision) -> ReleasePlan:
        """Select the records, keep those the row filter allows, count the grant's use and
        the bulk thresholds, and split the records over ledger entries."""
        rt, checked, plan = self.rt, decision.checked, decision.plan
        spec = checked.spec
        try:
            addressing = self.addressing(principal, spec, decision.plan_request)
            resolved = resolve(
                rt.vault,
                rt.lookup,
                spec,
                checked.request.selection,
                addressing,
                values=bool(plan.released),
            )
        except InputError as exc:
            raise self._invalid(principal, checked.request, 422, "invalid-filter", exc) from None
        keys, filtered_out = self._row_filtered(plan, resolved)
        released = plan.released
        usage: dict[SensitiveCategory, list[str]] = {}
        if keys and released:
            self._use_grant(decision)
            # 28 CFR 202.205: what the release counts, reserved in its ledger commit.
            usage = usage_for(plan, dict.fromkeys(resolved.subjects[k] for k in keys))
        chunks = chunk_records(keys, resolved.subjects, rt.subject_ref) if released else [[]]
        return ReleasePlan(
            keys=keys,
            subjects=resolved.subjects,
            missing=resolved.missing + filtered_out,
            next_page_token=resolved.next_page_token,
            chunks=chunks,
            stored=resolved.stored,
            usage=usage,
        )

    def addressing(
        self, principal: Principal, spec: DatasetSpec, request: PlanRequest
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
                action=request.action,
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

    def _row_filtered(self, plan: AccessPlan, resolved: Resolved) -> tuple[list[str], list[str]]:
        """(records the row filter keeps, records it keeps back)."""
        allowed_subjects = plan.allowed_subjects
        if allowed_subjects is None:
            return resolved.keys, []
        allowed = set(self.rt.lookup.tokens(sorted(allowed_subjects)).values())
        subjects = resolved.subjects
        return (
            [k for k in resolved.keys if subjects[k] in allowed],
            [k for k in resolved.keys if subjects[k] not in allowed],
        )

    def _use_grant(self, decision: Decision) -> None:
        """One use of the grant: checked against its max_uses and counted in one transaction
        (on any gateway of the database), only when records are about to leave under it."""
        grant = decision.grant
        if grant is None:
            return
        try:
            self.rt.approvals.use(grant, decision.checked.request.request_id)
        except GrantRejected as exc:
            status = 409 if exc.kind == "replayed" else 403
            raise self._deny_decided(decision, status, f"grant-{exc.kind}", str(exc)) from None

    # -- record ----------------------------------------------------------------------------

    def record(self, principal: Principal, decision: Decision, planned: ReleasePlan) -> Recorded:
        """Record BEFORE opening anything: one AccessDecision per chunk of records (a ledger
        entry holds at most 64 KiB), all appended in ONE commit.

        The bulk counters are checked and counted in that same commit (its side write), so
        a bulk-counted release waits for one durable commit, and the count exists exactly
        when the entries that record the release do. A count that would cross a threshold
        leaves the entries out; the refusal is then recorded, and nothing is released."""
        rt, checked, plan = self.rt, decision.checked, decision.plan
        header = checked.header.fields()
        grant_fields = decision.grant_fields
        released = plan.released
        released_fields = {f: t.value for f, t in released.items()}
        row_filter = plan.row_filter.kind.value if plan.row_filter else None
        reason = (header["purpose"] or "access")[:4096]
        at = iso(rt.clock.now())
        events: list[BaseModel] = []
        for chunk in planned.chunks:
            tokens = dict.fromkeys(planned.subjects[k] for k in chunk)
            events.append(
                AccessDecision(
                    **header,
                    reason=reason,
                    at=at,
                    decision="allow",
                    policies=list(plan.policies),
                    subjects=[rt.subject_ref(t) for t in tokens],
                    released_fields=released_fields if chunk else {},
                    released_records=list(chunk),
                    row_filter=row_filter,
                    access_request_id=decision.access_request_id,
                    **grant_fields,
                )
            )
        request = checked.request
        if request.action is Action.EXPORT and request.destination:
            events.append(
                Export(
                    actor=checked.header.actor,
                    reason=(header["purpose"] or "export")[:4096],
                    at=at,
                    dataset=checked.spec.name,
                    # Where the caller said it goes: typed text (a commitment by default).
                    destination=rt.public_text.publish(request.destination),
                    records=len(planned.keys),
                    fields=list(released),
                )
            )
        counted = (
            Counted(principal.id, principal.employer or "", planned.usage)
            if planned.usage
            else None
        )
        try:
            entries = record_entries(rt, events, counted=counted)
        except BulkThresholdExceeded as exc:
            rt.metrics.bulk_refusals.labels(exc.category.value).inc()
            raise self._deny_decided(decision, 429, "bulk-threshold", str(exc)) from None
        rt.metrics.decisions.labels(request.action.value, "allow").inc()
        return Recorded(entries, decisions=len(planned.chunks))

    # -- open ------------------------------------------------------------------------------

    def open(self, decision: Decision, planned: ReleasePlan, recorded: Recorded) -> Opened:
        """Open exactly what was recorded. Each chunk's read plan is bound to the one entry
        that lists its records (zip stops before a trailing Export entry): the vault refuses
        it unless that entry (checked against its receipt) lists every value opened."""
        rt, spec = self.rt, decision.checked.spec
        clear_side, sealed_side = sides(spec, decision.plan.released)
        sealed: list[OpenedValues] = []
        if sealed_side:
            for chunk, entry in zip(planned.chunks, recorded.entries, strict=False):
                if chunk:
                    bound = _bound(spec, chunk, sealed_side, entry)
                    sealed.append(rt.vault.open(bound, planned.stored))
        clear: dict[str, dict[str, object]] = {}
        if clear_side and planned.keys:
            clear = rt.vault.clear_values(spec.name, planned.keys, clear_side, planned.stored)
        return Opened(sealed, clear, clear_side)

    # -- transform -------------------------------------------------------------------------

    def transform(
        self, decision: Decision, opened: Opened, keys: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Each value in its planned form, by record key."""
        rt, plan = self.rt, decision.plan
        out: dict[str, dict[str, Any]] = {k: {} for k in keys}
        pseudonymize = self._pseudonymizer()
        for values in opened.sealed:
            for ref, value in values.items():
                fp = plan.field(ref.field)
                try:
                    shaped = apply_transform(
                        fp.transform, fp.kind, value, pseudonymize=pseudonymize
                    )
                except PseudonymUnavailable:
                    shaped = None
                out[ref.record][ref.field] = to_jsonable(shaped)
        if opened.clear_fields:
            field_plans = [plan.field(name) for name in opened.clear_fields]
            for key in keys:
                row = opened.clear.get(key, {})
                shaped_row = out[key]
                for fp in field_plans:
                    stored = row.get(fp.field)
                    if fp.transform is Transform.PSEUDONYM or fp.transform is Transform.CLEAR:
                        shaped_row[fp.field] = stored
                    else:
                        shaped_row[fp.field] = to_jsonable(
                            apply_transform(fp.transform, fp.kind, stored)
                        )
        for transform in decision.plan.released.values():
            rt.metrics.released_values.labels(transform.value).inc(len(keys))
        return out

    def _pseudonymizer(self) -> Callable[[Any], str]:
        vault = self.rt.vault

        def pseudonymize(value: Any) -> str:
            token = vault.pseudonym_of(str(value))
            if token is None:
                raise PseudonymUnavailable("no pseudonym exists for this value")
            return token

        return pseudonymize

    # -- respond ---------------------------------------------------------------------------

    def respond(
        self,
        decision: Decision,
        planned: ReleasePlan,
        recorded: Recorded,
        values: Mapping[str, dict[str, Any]],
    ) -> ReleaseOut:
        receipts = [receipt_out(r) for r in recorded.receipts]
        grant = decision.grant
        return ReleaseOut(
            request_id=decision.checked.request.request_id,
            dataset=decision.checked.spec.name,
            decision="allow",
            receipt=receipts[0],
            receipts=receipts[: recorded.decisions],
            plan=[
                FieldPlanOut(field=f.field, transform=f.transform.value, policies=list(f.policies))
                for f in decision.plan.fields
            ],
            # Built by this code from values it shaped: not validated again.
            records=[
                RecordOut.model_construct(record_id=k, values=values.get(k, {}))
                for k in planned.keys
            ],
            missing=planned.missing,
            next_page_token=planned.next_page_token,
            grant_id=grant.grant_id if grant else None,
            access_request_id=decision.access_request_id,
        )


def _bound(
    spec: DatasetSpec, chunk: Sequence[str], fields: Sequence[str], entry: tuple[Receipt, bytes]
) -> RecordedPlan:
    """A chunk's read plan bound to its ledger entry. An entry that does not list what is
    about to open is the gateway's own bug, never the caller's doing: refuse (500) rather
    than open an unrecorded value."""
    read_plan = ReadPlan.of(spec.name, ((k, f) for k in chunk for f in fields))
    try:
        return RecordedPlan.bind(read_plan, *entry)
    except InputError:
        log.error("a recorded plan did not match its ledger entry; nothing opened")
        raise IntegrityError(
            "the ledger entry does not list every value to open; nothing was released"
        ) from None


def _needs_ticket(plan: AccessPlan) -> bool:
    """Whether a field is released under a ticket's row filter."""
    return any(RowFilterKind.TICKET_SUBJECTS in f.row_filters for f in plan.fields if f.released)
