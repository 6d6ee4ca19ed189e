"""Access requests, N-person approvals, signed grants, revocation and break-glass.

Modelled on Google Access Approval: a request names who asks (with employer and location),
what (dataset, action, fields, subjects), why (a justification type and detail) and for how
long. Policy says how many distinct approvers it needs; the requester never approves their
own request, and every approver must be allowed the Cedar ``approve`` action. The last
approval issues a grant: signed (Ed25519), bound to the SHA-256 of the request's canonical
JSON, time-boxed by the injected clock, revocable, and refused when replayed.

Break-glass gives immediate, short access with a mandatory justification; it raises an alert
and opens a review that someone else must close.

Every step appends an ``Approval`` event to the ledger BEFORE the database changes, so the
ledger always knows at least every approval and grant in force. A crash between the two
leaves an event whose effect never happened (the step can be retried); never the reverse.

The ledger is a public log, so its events never carry a raw subject id: the subjects a
request names are recorded as keyed refs (``subject_refs``, the same refs access decisions
carry), computed by a function the caller injects (the gateway's comes from the vault), and a
data subject acting as a principal appears under their ref too. The request itself, with the
raw ids the grant covers, stays in the database.

Text a principal types is free text that can name anyone, so it goes through the injected
``PublicText`` (``policy/freetext.py``); per field of the ``Approval`` event:

* ``reason`` of "requested" and "break-glass": the justification detail; of "approved",
  "denied" and "revoked": the approver's, denier's or revoker's reason; of "reviewed": the
  outcome word in clear (``justified`` / ``unjustified``) and the review notes. By default the
  typed part is a keyed commitment (``"approved; text hmac-sha256:…"``), the text staying in
  the database (``free_texts``, and the request, approval and review rows);
  ``free_text = "publish"`` writes it as before.
* ``reason`` of "granted", "expired" and "refused": written by Bastion, not typed: clear.
* ``justification_type``, ``dataset``, ``action``, ``fields``, ``step``, ids: enumerated or
  structured: clear. (``subject_refs`` are keyed refs, above.)

The workflow is split along those lines, over one repository (``approval_repository``: the
tables, a frozen dataclass per row, and the writes of one locked transaction):

* ``approval_model``: settings, the request a principal makes, the stored record, outcomes;
* ``approval_steps``: what every step shares (events, recorded refusals, reading a request);
* ``access_requests``: request, approve, deny, and issuing the grant once;
* ``grant_uses``: verify a grant token, count its uses, revoke, expire;
* ``break_glass`` and ``reviews``: emergency access and its mandatory review.
"""

from __future__ import annotations

from bastion.policy.access_requests import RequestSteps
from bastion.policy.approval_model import (
    AccessRequestRecord,
    AccessRequestSpec,
    AlertCounters,
    AlertHook,
    ApprovalConfig,
    ApprovalRefused,
    BreakGlassAlert,
    IssuedGrant,
    RefusalKind,
    RequestStatus,
    Review,
    StepOutcome,
)
from bastion.policy.approval_repository import APPROVALS_DDL, migrate_approvals
from bastion.policy.break_glass import BreakGlassSteps
from bastion.policy.grant_uses import GrantSteps
from bastion.policy.reviews import ReviewSteps


class ApprovalService(RequestSteps, GrantSteps, BreakGlassSteps, ReviewSteps):
    """Every step of the workflow, over one database, ledger, clock and signing key."""


__all__ = [
    "APPROVALS_DDL",
    "AccessRequestRecord",
    "AccessRequestSpec",
    "AlertCounters",
    "AlertHook",
    "ApprovalConfig",
    "ApprovalRefused",
    "ApprovalService",
    "BreakGlassAlert",
    "IssuedGrant",
    "RefusalKind",
    "RequestStatus",
    "Review",
    "StepOutcome",
    "migrate_approvals",
]
