"""Policy: Cedar policies and schema; decision -> field plan; approvals, grants, bulk limits.

Public API (the gateway and the CLI use only these names):

* ``PolicyStore`` / ``PolicyRuntime``: versioned policy sets in the database, each change a
  ledger event; the runtime hands out the ``PolicyEngine`` for the policy in force.
* ``PolicyEngine.plan(principal, PlanRequest, grant=None) -> AccessPlan``; ``explain``.
* ``ApprovalService``: access requests, N-person approval, signed grants, revocation,
  break-glass with alert and review.
* ``TicketService``: tickets a ticketing service registers; a read's ticket row filter takes
  its subjects from the open ticket it names.
* ``BulkCounter``: 28 CFR 202.205 distinct-subject counters with check-and-reserve.
* ``apply_transform``: what a field plan's transform does to a value.
* ``PublicText``: what the public log carries for typed text (a keyed commitment by default).
"""

from __future__ import annotations

from typing import Any

from bastion.clock import Clock, SystemClock
from bastion.events import SYSTEM, Actor
from bastion.ledger.api import LedgerWriter
from bastion.policy.approvals import (
    AccessRequestRecord,
    AccessRequestSpec,
    ApprovalConfig,
    ApprovalRefused,
    ApprovalService,
    BreakGlassAlert,
    IssuedGrant,
    Review,
    StepOutcome,
    migrate_approvals,
)
from bastion.policy.compiler import (
    CompiledPolicies,
    PolicyInfo,
    PolicyRejected,
    compile_policies,
    default_pack_text,
    default_policies,
    schema_text,
)
from bastion.policy.engine import ApprovalResource, Decision, PolicyEngine
from bastion.policy.explain import Explanation, explain
from bastion.policy.freetext import (
    PublicText,
    keyed_commitment,
    migrate_free_text,
    text_commitment,
    text_key,
)
from bastion.policy.grants import GRANT_KEY_NAME, GrantClaims, GrantRejected, verify_grant_token
from bastion.policy.plan import (
    AccessPlan,
    ApprovalRequirement,
    FieldPlan,
    GrantScope,
    PlanRequest,
    RowFilter,
)
from bastion.policy.principal import (
    COUNTRIES_OF_CONCERN,
    PrincipalAttributes,
    PrincipalConfig,
    PrincipalLike,
    PrincipalSpec,
    derive_attributes,
)
from bastion.policy.registry import PrincipalRegistry
from bastion.policy.store import (
    PolicyLoadResult,
    PolicyRuntime,
    PolicyStore,
    StoredPolicy,
    migrate_policy_store,
)
from bastion.policy.thresholds import (
    LEGAL_THRESHOLDS,
    BulkCounter,
    BulkThresholdExceeded,
    BulkThresholds,
    Reservation,
    migrate_thresholds,
    usage_for,
)
from bastion.policy.tickets import (
    TicketConfig,
    TicketOutcome,
    TicketRecord,
    TicketRefused,
    TicketService,
    TicketSpec,
    migrate_tickets,
)
from bastion.policy.transforms import FieldKind, PseudonymUnavailable, apply_transform, kind_of
from bastion.policy.vocabulary import Action, JustificationType, RowFilterKind, Transform
from bastion.store import Database


def initialize_policy(
    db: Database,
    ledger: LedgerWriter | None = None,
    *,
    clock: Clock | None = None,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """Create the policy, approval and bulk-counter tables; with a ledger, install the shipped
    policy pack if no policy is loaded yet (recording the change). Idempotent."""
    migrate_policy_store(db)
    migrate_approvals(db)
    migrate_thresholds(db)
    migrate_tickets(db)
    PrincipalRegistry(db, clock or SystemClock()).migrate()
    summary: dict[str, Any] = {}
    if ledger is not None:
        # No PublicText: the one reason this store loads with is Bastion's own ("install the
        # shipped policy pack"), not typed text, so it stays in clear in the log.
        store = PolicyStore(db, ledger, clock or SystemClock())
        active = store.active()
        if active is None:
            result = store.load(default_pack_text(), actor, "install the shipped policy pack")
            summary["policy"] = f"v{result.version} {result.sha256[:12]} (shipped pack)"
        else:
            summary["policy"] = f"v{active.version} {active.sha256[:12]}"
    return summary


__all__ = [
    "COUNTRIES_OF_CONCERN",
    "GRANT_KEY_NAME",
    "LEGAL_THRESHOLDS",
    "AccessPlan",
    "AccessRequestRecord",
    "AccessRequestSpec",
    "Action",
    "ApprovalConfig",
    "ApprovalRefused",
    "ApprovalRequirement",
    "ApprovalResource",
    "ApprovalService",
    "BreakGlassAlert",
    "BulkCounter",
    "BulkThresholdExceeded",
    "BulkThresholds",
    "CompiledPolicies",
    "Decision",
    "Explanation",
    "FieldKind",
    "FieldPlan",
    "GrantClaims",
    "GrantRejected",
    "GrantScope",
    "IssuedGrant",
    "JustificationType",
    "PlanRequest",
    "PolicyEngine",
    "PolicyInfo",
    "PolicyLoadResult",
    "PolicyRejected",
    "PolicyRuntime",
    "PolicyStore",
    "PrincipalAttributes",
    "PrincipalConfig",
    "PrincipalLike",
    "PrincipalSpec",
    "PseudonymUnavailable",
    "PublicText",
    "Reservation",
    "Review",
    "RowFilter",
    "RowFilterKind",
    "StepOutcome",
    "StoredPolicy",
    "TicketConfig",
    "TicketOutcome",
    "TicketRecord",
    "TicketRefused",
    "TicketService",
    "TicketSpec",
    "Transform",
    "apply_transform",
    "compile_policies",
    "default_pack_text",
    "default_policies",
    "derive_attributes",
    "explain",
    "initialize_policy",
    "keyed_commitment",
    "kind_of",
    "migrate_free_text",
    "migrate_tickets",
    "schema_text",
    "text_commitment",
    "text_key",
    "usage_for",
    "verify_grant_token",
]
