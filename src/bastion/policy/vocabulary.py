"""The words policies, plans and approvals share: actions, transforms, justifications, filters."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """The Cedar actions of the schema (``Bastion::Action::"read"`` ...)."""

    READ = "read"
    SEARCH = "search"
    EXPORT = "export"
    ANALYZE = "analyze"
    APPROVE = "approve"
    ADMINISTER = "administer"
    # Opening a field under a break-glass session. Never requested by a caller: the engine
    # asks it for the fields a break-glass grant covers, so break-glass is decided by its own
    # permit and no context flag a request could set ever lifts a forbid.
    BREAK_GLASS = "break_glass"
    # Opening and closing a registered ticket (``policy/tickets.py``); the resource is the
    # System. A ticket names the subjects staff may read under it, so who may open one is a
    # policy decision like any other.
    OPEN_TICKET = "open_ticket"
    CLOSE_TICKET = "close_ticket"
    # Writes from the platform's services and from data subjects (rectification). A record
    # delete asks ``delete`` for every field of the dataset.
    WRITE = "write"
    DELETE = "delete"
    # A data subject's rights (resource: SubjectData) and legal holds (resource: System).
    SUBJECT_EXPORT = "subject_export"
    REQUEST_ERASURE = "request_erasure"
    LEGAL_HOLD = "legal_hold"
    # Following a dataset's change feed (resource: Dataset).
    FOLLOW_CHANGES = "follow_changes"
    # A field leaving through a declared flow, asked for the flow's recipient (role
    # "recipient") when the flow loads and before each run; never asked by a caller.
    EGRESS = "egress"


# Actions whose resource is a Field: they produce a per-field plan with transforms.
FIELD_ACTIONS = frozenset({Action.READ, Action.SEARCH, Action.EXPORT})
# Every action whose resource is a Field, the engine's own break-glass action included.
RELEASE_ACTIONS = FIELD_ACTIONS | {Action.BREAK_GLASS}
# Actions that change a Field's stored values; a permit for them carries no @transform.
WRITE_ACTIONS = frozenset({Action.WRITE, Action.DELETE})
# Every action on a Field: what the invariant checker proves its invariants over.
FIELD_RESOURCE_ACTIONS = RELEASE_ACTIONS | WRITE_ACTIONS | {Action.EGRESS}


class Transform(StrEnum):
    """What a field becomes on release, from most to least revealing (see ``REVEAL_ORDER``)."""

    CLEAR = "clear"
    GENERALIZE = "generalize"
    MASK = "mask"
    PSEUDONYM = "pseudonym"
    DENY = "deny"


# Total order used when several permits match one field: the least revealing one wins, so a
# permit's @transform is an upper bound for everyone it matches. Generalized values (birth
# year, region, /24) keep more of the value than masked ones (domain, last 4 digits), and a
# pseudonym keeps only linkability.
REVEAL_ORDER: dict[Transform, int] = {
    Transform.DENY: 0,
    Transform.PSEUDONYM: 1,
    Transform.MASK: 2,
    Transform.GENERALIZE: 3,
    Transform.CLEAR: 4,
}


def least_revealing(transforms: list[Transform]) -> Transform:
    if not transforms:
        return Transform.DENY
    return min(transforms, key=REVEAL_ORDER.__getitem__)


class JustificationType(StrEnum):
    """Why access is asked for; modelled on Google Access Approval's justification reasons.

    ``customer_initiated_support`` (the subject asked for help), ``service_operation``
    (Google's "Google initiated service"), ``security_review`` (abuse, fraud, security),
    ``production_alert`` (responding to an outage), ``third_party_data_request`` (legal
    process or a regulator), ``customer_authorized_workflow`` and ``break_glass``.
    """

    CUSTOMER_INITIATED_SUPPORT = "customer_initiated_support"
    SERVICE_OPERATION = "service_operation"
    SECURITY_REVIEW = "security_review"
    PRODUCTION_ALERT = "production_alert"
    THIRD_PARTY_DATA_REQUEST = "third_party_data_request"
    CUSTOMER_AUTHORIZED_WORKFLOW = "customer_authorized_workflow"
    BREAK_GLASS = "break_glass"


class RowFilterKind(StrEnum):
    """Row filters a permit may carry with ``@row_filter``."""

    # Only the subjects named in the ticket (the request's ``ticket_subjects``).
    TICKET_SUBJECTS = "ticket_subjects"
    # Only the subjects a grant was approved for (added by Bastion whenever a grant is used).
    GRANT_SUBJECTS = "grant_subjects"


# Annotation keys Bastion understands; any other key is refused at load (a typo such as
# @tranform must not silently fall back to a default).
ANNOTATION_ID = "id"
ANNOTATION_DESCRIPTION = "description"
ANNOTATION_TRANSFORM = "transform"
ANNOTATION_ROW_FILTER = "row_filter"
ANNOTATION_APPROVERS = "approvers"
KNOWN_ANNOTATIONS = frozenset(
    {
        ANNOTATION_ID,
        ANNOTATION_DESCRIPTION,
        ANNOTATION_TRANSFORM,
        ANNOTATION_ROW_FILTER,
        ANNOTATION_APPROVERS,
    }
)

MAX_APPROVERS = 9
