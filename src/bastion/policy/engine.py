"""Decide with Cedar, then turn the per-field decisions into an access plan.

For a request on fields of a dataset, the engine asks Cedar once per field (one batch) with
the field as the resource. For each field:

* **deny** (a forbid matched, or no permit did: default deny) -> ``deny``; the determining
  forbids, or "no permit", are the reason. If the field would be allowed with an approved
  grant (a second, hypothetical batch with ``context.grant``), it *needs approval*: the
  number of approvers is the largest ``@approvers`` among the forbids that denied it.
* **allow** -> the LEAST revealing ``@transform`` among the permits that matched. Each permit
  is therefore an upper bound on what the population it matches can see, and adding a
  minimizing permit can only reduce exposure. ``@row_filter`` obligations of those permits
  restrict the rows; when several apply, their subject sets intersect.

Any evaluation error in a field's decision denies that field (fail closed): Cedar skips a
policy that errors, and a skipped forbid must not turn into an allow.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

import cedarpy

from bastion.catalog import Catalog, DatasetSpec, FieldSpec, SensitiveCategory
from bastion.clock import Clock
from bastion.errors import InputError
from bastion.policy.compiler import (
    NAMESPACE,
    CompiledPolicies,
    PolicyInfo,
    bastion_schema,
    cedar_id_order,
)
from bastion.policy.plan import (
    AccessPlan,
    ApprovalRequirement,
    FieldPlan,
    GrantScope,
    PlanRequest,
    RowFilter,
    combine_row_filters,
)
from bastion.policy.principal import (
    DEFAULT_PRINCIPAL_CONFIG,
    PrincipalAttributes,
    PrincipalConfig,
    PrincipalLike,
    derive_attributes,
)
from bastion.policy.transforms import kind_of
from bastion.policy.vocabulary import (
    FIELD_ACTIONS,
    MAX_APPROVERS,
    WRITE_ACTIONS,
    Action,
    JustificationType,
    RowFilterKind,
    Transform,
    least_revealing,
)

# When a forbid is lifted by a grant but carries no @approvers (e.g. a permit that itself
# requires context.grant), ask for this many approvers.
DEFAULT_APPROVERS = 2

T_PRINCIPAL = f"{NAMESPACE}::Principal"
T_ACTION = f"{NAMESPACE}::Action"
T_DATASET = f"{NAMESPACE}::Dataset"
T_FIELD = f"{NAMESPACE}::Field"
T_REQUEST = f"{NAMESPACE}::AccessRequest"
T_HISTORY = f"{NAMESPACE}::AccessHistory"
T_SYSTEM = f"{NAMESPACE}::System"
T_SUBJECT_DATA = f"{NAMESPACE}::SubjectData"
T_CATEGORY = f"{NAMESPACE}::Category"
T_CLASSIFICATION = f"{NAMESPACE}::Classification"
T_JUSTIFICATION = f"{NAMESPACE}::Justification"


def _uid(type_: str, id_: str) -> dict[str, str]:
    return {"type": type_, "id": id_}


def _ref(type_: str, id_: str) -> dict[str, dict[str, str]]:
    return {"__entity": _uid(type_, id_)}


def cedar_datetime(when: datetime) -> dict[str, Any]:
    """A Cedar ``datetime`` extension value (millisecond precision, UTC)."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return {"__extn": {"fn": "datetime", "arg": text}}


def field_entity_id(dataset: str, field: str) -> str:
    return f"{dataset}.{field}"


@dataclass(frozen=True)
class Decision:
    """One Cedar decision with the policies that determined it, named by their @id."""

    allowed: bool
    policies: tuple[PolicyInfo, ...]
    errors: tuple[str, ...] = ()

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.policies)

    @property
    def reason(self) -> str:
        if self.errors:
            return "policy evaluation error (denied, fail closed)"
        if self.policies:
            verb = "permitted by" if self.allowed else "forbidden by"
            return f"{verb} {', '.join(self.policy_ids)}"
        return "no policy permits it (default deny)"


@dataclass(frozen=True)
class WriteDecision:
    """A write decided field by field; allowed only when every field is."""

    dataset: str
    action: Action
    fields: Mapping[str, Decision]
    policy_sha256: str

    @property
    def allowed(self) -> bool:
        return all(d.allowed for d in self.fields.values())

    @property
    def denied(self) -> tuple[str, ...]:
        return tuple(name for name, d in self.fields.items() if not d.allowed)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(sorted({p for d in self.fields.values() for p in d.policy_ids}))

    @property
    def reason(self) -> str:
        denied = self.denied
        if not denied:
            return ""
        first = self.fields[denied[0]]
        return f"field {denied[0]!r}: {first.reason}"


@dataclass(frozen=True)
class ApprovalResource:
    """An access request as the ``approve`` action's resource."""

    request_id: str
    requester_id: str
    requester_employer: str
    dataset: str
    categories: frozenset[SensitiveCategory]
    justification: JustificationType | None
    break_glass: bool = False


def catalog_entities(catalog: Catalog) -> list[dict[str, Any]]:
    """Every dataset and field of the catalog as Cedar entities (fields are in their dataset)."""
    out: list[dict[str, Any]] = []
    for ds in catalog.datasets:
        out.append({"uid": _uid(T_DATASET, ds.name), "attrs": {"name": ds.name}, "parents": []})
        for f in ds.fields:
            out.append(
                {
                    "uid": _uid(T_FIELD, field_entity_id(ds.name, f.name)),
                    "attrs": {
                        "dataset": ds.name,
                        "name": f.name,
                        "type": f.type.value,
                        "classification": _ref(T_CLASSIFICATION, f.classification.value),
                        "category": _ref(T_CATEGORY, f.category.value if f.category else "none"),
                        "pseudonymize": f.pseudonymize,
                    },
                    "parents": [_uid(T_DATASET, ds.name)],
                }
            )
    return out


def principal_entity(attrs: PrincipalAttributes) -> dict[str, Any]:
    return {"uid": _uid(T_PRINCIPAL, attrs.id), "attrs": attrs.cedar_attrs(), "parents": []}


class PolicyEngine:
    """A compiled policy set bound to a catalog. Immutable: a policy change builds a new one."""

    def __init__(
        self,
        policies: CompiledPolicies,
        catalog: Catalog,
        *,
        clock: Clock,
        principal_config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG,
        plan_cache_size: int = 4096,
    ) -> None:
        self.policies = policies
        self.catalog = catalog
        self.clock = clock
        self.principal_config = principal_config
        self._schema = bastion_schema()
        # Parsed once: the catalog graph is the stable base every request adds its caller to.
        self._base = cedarpy.Entities.from_json_str(
            json.dumps(catalog_entities(catalog)), self._schema
        )
        # Plans repeat (the same caller asks the same thing many times); an engine is bound to
        # one policy version, so a cached plan can never outlive the policy that made it.
        # Off when a policy reads context.now: then the same request can decide differently.
        self._cache: OrderedDict[Hashable, AccessPlan] = OrderedDict()
        self._cache_size = 0 if policies.uses_now else plan_cache_size
        self._cache_lock = threading.Lock()
        # Write decisions repeat the same way (a service writes the same fields all day), and
        # one Cedar batch per write was most of a single write's CPU time.
        self._write_cache: OrderedDict[Hashable, WriteDecision] = OrderedDict()

    @property
    def sha256(self) -> str:
        return self.policies.sha256

    def attributes(self, principal: PrincipalLike) -> PrincipalAttributes:
        return derive_attributes(principal, self.principal_config)

    # ------------------------------------------------------------------ cedar calls

    def _context(
        self,
        *,
        purpose: str = "",
        justification: JustificationType | None = None,
        ticket: str = "",
        approvals: int = 0,
        grant: bool = False,
        break_glass: bool = False,
        subject_count: int = 0,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        return {
            "purpose": purpose,
            "justification": _ref(
                T_JUSTIFICATION, justification.value if justification else "none"
            ),
            "ticket": ticket,
            "now": cedar_datetime(now or self.clock.now()),
            "approvals": approvals,
            "grant": grant,
            "break_glass": break_glass,
            "subject_count": subject_count,
        }

    def _decide(
        self,
        entities: cedarpy.Entities,
        principal_id: str,
        requests: Sequence[tuple[Action, dict[str, str], dict[str, Any]]],
    ) -> list[Decision]:
        if not requests:
            return []
        batch = [
            {
                "principal": _uid(T_PRINCIPAL, principal_id),
                "action": _uid(T_ACTION, action.value),
                "resource": resource,
                "context": context,
            }
            for action, resource, context in requests
        ]
        # No schema here: the engine builds every request itself (a test checks them against
        # the schema), and a malformed one fails closed as an evaluation error anyway.
        results = cedarpy.is_authorized_batch(batch, self.policies.policy_set, entities)
        out: list[Decision] = []
        for res in results:
            errors = tuple(str(e) for e in res.diagnostics.errors)
            infos = tuple(
                self.policies.by_cedar_id[r]
                for r in sorted(res.diagnostics.reasons, key=cedar_id_order)
                if r in self.policies.by_cedar_id
            )
            out.append(Decision(allowed=res.allowed and not errors, policies=infos, errors=errors))
        return out

    def _entities_with(self, extra: Sequence[Mapping[str, Any]]) -> cedarpy.Entities:
        return self._base.with_added_json_str(json.dumps(list(extra)))

    def authorize(
        self,
        principal: PrincipalLike,
        action: Action,
        resource: tuple[str, str],
        *,
        extra_entities: Sequence[Mapping[str, Any]] = (),
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """One decision for any action/resource (type name without namespace, id)."""
        attrs = self.attributes(principal)
        entities = self._entities_with([principal_entity(attrs), *extra_entities])
        ctx = self._context(**(context or {}))
        return self._decide(
            entities, attrs.id, [(action, _uid(f"{NAMESPACE}::{resource[0]}", resource[1]), ctx)]
        )[0]

    # ------------------------------------------------------------------ special resources

    def can_approve(self, approver: PrincipalLike, request: ApprovalResource) -> Decision:
        entity = {
            "uid": _uid(T_REQUEST, request.request_id),
            "attrs": {
                "requester": _ref(T_PRINCIPAL, request.requester_id),
                "requester_employer": request.requester_employer,
                "dataset": request.dataset,
                "categories": [_ref(T_CATEGORY, c.value) for c in sorted(request.categories)],
                "justification": _ref(
                    T_JUSTIFICATION,
                    request.justification.value if request.justification else "none",
                ),
                "break_glass": request.break_glass,
            },
            "parents": [],
        }
        return self.authorize(
            approver,
            Action.APPROVE,
            ("AccessRequest", request.request_id),
            extra_entities=[entity],
            context={"justification": request.justification},
        )

    def can_administer(self, principal: PrincipalLike) -> Decision:
        return self.authorize(
            principal,
            Action.ADMINISTER,
            ("System", "bastion"),
            extra_entities=[{"uid": _uid(T_SYSTEM, "bastion"), "attrs": {}, "parents": []}],
        )

    def can_read_access_history(self, principal: PrincipalLike, subject_id: str) -> Decision:
        entity = {
            "uid": _uid(T_HISTORY, subject_id),
            "attrs": {"subject": subject_id},
            "parents": [],
        }
        return self.authorize(
            principal, Action.READ, ("AccessHistory", subject_id), extra_entities=[entity]
        )

    def decide_write(
        self, principal: PrincipalLike, dataset: str, fields: Sequence[str], action: Action
    ) -> WriteDecision:
        """Decide a write (or a record delete) field by field: allowed only when every field
        is. Raises InputError naming an unknown dataset or field."""
        if action not in WRITE_ACTIONS:
            raise InputError(f"action {action.value!r} does not write a dataset")
        return self._decide_fields(principal, dataset, fields, action)

    def decide_egress(
        self, recipient: PrincipalLike, dataset: str, fields: Sequence[str]
    ) -> WriteDecision:
        """Decide a flow's fields for its recipient (role "recipient"), field by field: the
        flow may read a field only when it is allowed. Raises InputError naming an unknown
        dataset or field."""
        return self._decide_fields(recipient, dataset, fields, Action.EGRESS)

    def _decide_fields(
        self, principal: PrincipalLike, dataset: str, fields: Sequence[str], action: Action
    ) -> WriteDecision:
        ds = self.catalog.dataset(dataset)
        specs = [ds.field(name) for name in dict.fromkeys(fields)]
        if not specs:
            raise InputError("no fields to decide", dataset=ds.name)
        attrs = self.attributes(principal)
        key: Hashable = (attrs, ds.name, tuple(f.name for f in specs), action)
        if self._cache_size:
            with self._cache_lock:
                cached = self._write_cache.get(key)
                if cached is not None:
                    self._write_cache.move_to_end(key)
                    return cached
        entities = self._entities_with([principal_entity(attrs)])
        ctx = self._context()
        decisions = self._decide(
            entities,
            attrs.id,
            [(action, _uid(T_FIELD, field_entity_id(ds.name, f.name)), ctx) for f in specs],
        )
        decision = WriteDecision(
            dataset=ds.name,
            action=action,
            fields=MappingProxyType({f.name: d for f, d in zip(specs, decisions, strict=True)}),
            policy_sha256=self.sha256,
        )
        if self._cache_size:
            with self._cache_lock:
                self._write_cache[key] = decision
                while len(self._write_cache) > self._cache_size:
                    self._write_cache.popitem(last=False)
        return decision

    def can_exercise_right(
        self, principal: PrincipalLike, action: Action, subject_id: str
    ) -> Decision:
        """A data-subject right (export, erasure request) over ``subject_id``'s data."""
        if action not in (Action.SUBJECT_EXPORT, Action.REQUEST_ERASURE):
            raise InputError(f"action {action.value!r} is not a data-subject right")
        entity = {"uid": _uid(T_SUBJECT_DATA, subject_id), "attrs": {"subject": subject_id}}
        return self.authorize(
            principal,
            action,
            ("SubjectData", subject_id),
            extra_entities=[{**entity, "parents": []}],
        )

    def can_follow_changes(self, principal: PrincipalLike, dataset: str) -> Decision:
        """Following a dataset's change feed (record keys and field names, never values)."""
        return self.authorize(principal, Action.FOLLOW_CHANGES, ("Dataset", dataset))

    def can_place_legal_hold(self, principal: PrincipalLike) -> Decision:
        return self.authorize(
            principal,
            Action.LEGAL_HOLD,
            ("System", "bastion"),
            extra_entities=[{"uid": _uid(T_SYSTEM, "bastion"), "attrs": {}, "parents": []}],
        )

    # ------------------------------------------------------------------ plans

    def _fields(self, ds: DatasetSpec, names: tuple[str, ...] | None) -> list[FieldSpec]:
        if names is None:
            return list(ds.fields)
        if not names:
            raise InputError("no fields requested", dataset=ds.name)
        return [ds.field(n) for n in names]  # InputError naming an unknown field

    def plan(
        self,
        principal: PrincipalLike,
        request: PlanRequest,
        *,
        grant: GrantScope | None = None,
    ) -> AccessPlan:
        """Decide a request and plan every field. Raises InputError for unknown names."""
        attrs = self.attributes(principal)
        key: Hashable = (attrs, request, grant)
        if self._cache_size:
            with self._cache_lock:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    return cached
        plan = self._plan_uncached(attrs, request, grant)
        if self._cache_size:
            with self._cache_lock:
                self._cache[key] = plan
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return plan

    def _plan_uncached(
        self, attrs: PrincipalAttributes, request: PlanRequest, grant: GrantScope | None
    ) -> AccessPlan:
        ds = self.catalog.dataset(request.dataset)
        if grant is not None and (grant.dataset != ds.name or grant.action is not request.action):
            raise InputError("the grant does not cover this dataset and action", dataset=ds.name)
        if request.action in FIELD_ACTIONS:
            return self._plan_fields(attrs, ds, request, grant)
        if request.action is Action.ANALYZE:
            return self._plan_dataset(attrs, ds, request)
        raise InputError(f"action {request.action.value!r} does not read a dataset")

    def _plan_dataset(
        self, attrs: PrincipalAttributes, ds: DatasetSpec, request: PlanRequest
    ) -> AccessPlan:
        entities = self._entities_with([principal_entity(attrs)])
        ctx = self._context(
            purpose=request.purpose,
            justification=request.justification,
            ticket=request.ticket,
            subject_count=request.subject_count,
        )
        decision = self._decide(
            entities, attrs.id, [(request.action, _uid(T_DATASET, ds.name), ctx)]
        )[0]
        return AccessPlan(
            dataset=ds.name,
            action=request.action,
            decision="allow" if decision.allowed else "deny",
            fields=(),
            row_filter=None,
            policies=decision.policy_ids,
            approval=None,
            policy_sha256=self.sha256,
            principal_id=attrs.id,
            purpose=request.purpose,
            justification=request.justification,
            ticket=request.ticket,
            denied_reason=None if decision.allowed else decision.reason,
        )

    def _plan_fields(
        self,
        attrs: PrincipalAttributes,
        ds: DatasetSpec,
        request: PlanRequest,
        grant: GrantScope | None,
    ) -> AccessPlan:
        specs = self._fields(ds, request.fields)
        entities = self._entities_with([principal_entity(attrs)])
        now = self.clock.now()
        justification = (grant.justification if grant else None) or request.justification
        common: dict[str, Any] = {
            "purpose": request.purpose,
            "justification": justification,
            "ticket": request.ticket,
            "subject_count": request.subject_count,
            "now": now,
        }
        plain_ctx = self._context(**common)
        covered = {f.name for f in specs if grant is not None and f.name in grant.fields}
        granted_action, granted_ctx = self._granted(request.action, grant, common, plain_ctx)
        actual = self._decide(
            entities,
            attrs.id,
            [
                (
                    granted_action if f.name in covered else request.action,
                    _uid(T_FIELD, field_entity_id(ds.name, f.name)),
                    granted_ctx if f.name in covered else plain_ctx,
                )
                for f in specs
            ],
        )

        # Would an approved grant release what was denied? Ask Cedar, hypothetically.
        hypothetical_ctx = self._context(**common, grant=True, approvals=MAX_APPROVERS)
        retry = [
            i
            for i, d in enumerate(actual)
            if specs[i].name not in covered and self._grant_could_lift(d)
        ]
        retried = self._decide(
            entities,
            attrs.id,
            [
                (
                    request.action,
                    _uid(T_FIELD, field_entity_id(ds.name, specs[i].name)),
                    hypothetical_ctx,
                )
                for i in retry
            ],
        )
        if_approved = dict(zip(retry, retried, strict=True))

        field_plans: list[FieldPlan] = []
        filters: list[RowFilter] = []
        pending_policies: list[str] = []
        pending_n = 0
        for i, (spec, decision) in enumerate(zip(specs, actual, strict=True)):
            fp, row_filters = self._field_plan(
                spec, decision, if_approved.get(i), spec.name in covered, request
            )
            field_plans.append(fp)
            if fp.released:
                filters.extend(row_filters)
            if fp.needs_approval:
                pending_n = max(pending_n, fp.approvers_required)
                pending_policies.extend(fp.policies)

        # A grant releases only its own subjects; "every subject" is only ever an explicit,
        # separately approved grant (an empty set of subjects releases no row).
        if grant is not None and covered and not grant.all_subjects:
            filters.append(
                RowFilter(
                    RowFilterKind.GRANT_SUBJECTS, grant.subjects, (f"grant:{grant.grant_id}",)
                )
            )
        released = [f for f in field_plans if f.released]
        pending = [f for f in field_plans if f.needs_approval]
        approval = (
            ApprovalRequirement(
                approvers=pending_n,
                fields=tuple(f.field for f in pending),
                policies=tuple(dict.fromkeys(pending_policies)),
                categories=tuple(sorted({f.category for f in pending if f.category})),
            )
            if pending
            else None
        )
        decided_by = tuple(dict.fromkeys(p for f in field_plans for p in f.policies))
        return AccessPlan(
            dataset=ds.name,
            action=request.action,
            decision="allow" if released else "deny",
            fields=tuple(field_plans),
            row_filter=combine_row_filters(filters),
            policies=decided_by,
            approval=approval,
            policy_sha256=self.sha256,
            principal_id=attrs.id,
            grant_id=grant.grant_id if grant is not None and covered else None,
            break_glass=bool(grant is not None and covered and grant.break_glass),
            purpose=request.purpose,
            justification=justification,
            ticket=request.ticket,
            denied_reason=None if released else _deny_summary(field_plans),
        )

    def _granted(
        self,
        action: Action,
        grant: GrantScope | None,
        common: dict[str, Any],
        plain_ctx: dict[str, Any],
    ) -> tuple[Action, dict[str, Any]]:
        """The action and context a field covered by ``grant`` is decided under.

        An approved grant sets ``context.grant`` and its approver count: both come from a grant
        this gateway verified, never from the request. A break-glass session is decided as the
        ``break_glass`` action, by the permit written for it (clearance, role, MFA), so no flag
        a caller can raise lifts any forbid; ``context.break_glass`` is set only there.
        """
        if grant is None:
            return action, plain_ctx
        if grant.break_glass:
            # Break-glass opens records to read them, never to search or export in bulk.
            if action is not Action.READ:
                return action, plain_ctx
            return Action.BREAK_GLASS, self._context(**common, break_glass=True)
        return action, self._context(**common, grant=True, approvals=grant.approvals)

    def _grant_could_lift(self, decision: Decision) -> bool:
        """Only a denial whose every forbid reads the grant (or, with no forbid, a set with a
        permit that reads it) can turn into an allow once approved."""
        if decision.allowed or decision.errors:
            return False
        if decision.policies:
            return all(p.mentions_grant for p in decision.policies)
        return self.policies.permits_mention_grant

    def _field_plan(
        self,
        spec: FieldSpec,
        decision: Decision,
        if_approved: Decision | None,
        via_grant: bool,
        request: PlanRequest,
    ) -> tuple[FieldPlan, list[RowFilter]]:
        base: dict[str, Any] = {
            "field": spec.name,
            "kind": kind_of(spec),
            "classification": spec.classification,
            "category": spec.category,
            "pseudonymize": spec.pseudonymize,
            "policies": decision.policy_ids,
        }
        if decision.allowed:
            transform = least_revealing([p.transform for p in decision.policies if p.transform])
            filters = [
                RowFilter(
                    RowFilterKind.TICKET_SUBJECTS, frozenset(request.ticket_subjects), (p.id,)
                )
                for p in decision.policies
                if p.row_filter is RowFilterKind.TICKET_SUBJECTS
            ]
            reason = decision.reason
            if len({p.transform for p in decision.policies}) > 1:
                reason += f"; least revealing transform wins: {transform.value}"
            return (
                FieldPlan(
                    **base,
                    transform=transform,
                    reason=reason,
                    via_grant=via_grant,
                    row_filters=tuple(f.kind for f in filters),
                ),
                filters,
            )
        if if_approved is not None and if_approved.allowed:
            lifted = [p.approvers for p in decision.policies if p.approvers]
            n = max(lifted) if lifted else DEFAULT_APPROVERS
            after = least_revealing([p.transform for p in if_approved.policies if p.transform])
            return (
                FieldPlan(
                    **base,
                    transform=Transform.DENY,
                    reason=f"{decision.reason}; needs approval by {n} distinct approvers",
                    needs_approval=True,
                    approvers_required=n,
                    transform_if_approved=after,
                ),
                [],
            )
        return FieldPlan(**base, transform=Transform.DENY, reason=decision.reason), []


def _deny_summary(fields: Sequence[FieldPlan]) -> str:
    if any(f.needs_approval for f in fields):
        return "every requested field is denied; some need approval"
    reasons = list(dict.fromkeys(f.reason for f in fields))
    return "; ".join(reasons[:3]) if reasons else "nothing requested"


__all__ = [
    "DEFAULT_APPROVERS",
    "ApprovalResource",
    "Decision",
    "PolicyEngine",
    "cedar_datetime",
    "field_entity_id",
]
