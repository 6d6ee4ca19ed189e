"""Grants on both backends: "every subject" is explicit and needs more approvers, and a grant
is used at most ``max_uses`` times in its window, counted atomically."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from bastion.errors import ConfigError, InputError
from bastion.events import Approval
from bastion.home import settings_from
from bastion.ledger.log import Log
from bastion.policy import (
    AccessRequestSpec,
    Action,
    ApprovalConfig,
    ApprovalService,
    GrantRejected,
    JustificationType,
    PlanRequest,
    PolicyRuntime,
    RowFilterKind,
    Transform,
)
from bastion.policy.vocabulary import MAX_APPROVERS

from .conftest import PEOPLE, recorded

SUPPORT = AccessRequestSpec(
    dataset="users",
    fields=("email", "location"),
    subjects=("u1",),
    justification_type=JustificationType.CUSTOMER_INITIATED_SUPPORT,
    justification_detail="The user asked us to find where their stolen phone was last seen",
    ticket="SUP-77",
    purpose="account recovery",
    duration_seconds=3600,
)
EVERYONE = SUPPORT.model_copy(update={"subjects": (), "all_subjects": True})
OFFICERS = ("officer1", "officer2", "officer3")


def approvals_events(ledger: Log) -> list[Approval]:
    return [e for e in recorded(ledger) if isinstance(e, Approval)]


def grant(approvals: ApprovalService, spec: AccessRequestSpec) -> str:
    """Approve ``spec`` with as many officers as it needs; the grant token."""
    rec = approvals.request(PEOPLE["staff"], spec).request
    out = None
    for who in OFFICERS[: rec.approvers_required]:
        out = approvals.approve(rec.id, PEOPLE[who], "checked")
    assert out is not None and out.grant is not None
    return out.grant.token


# ---------------------------------------------------------------- every subject


def test_an_empty_subject_list_is_refused_not_read_as_everyone(
    approvals: ApprovalService,
) -> None:
    # Before: subjects=[] was accepted, and the grant released every subject's rows.
    with pytest.raises(InputError, match="all_subjects") as err:
        approvals.request(PEOPLE["staff"], SUPPORT.model_copy(update={"subjects": ()}))
    assert err.value.field == "subjects"
    with pytest.raises(InputError, match="name no subjects"):
        approvals.request(PEOPLE["staff"], SUPPORT.model_copy(update={"all_subjects": True}))


def test_every_subject_needs_one_more_approver_and_is_recorded_so(
    approvals: ApprovalService, ledger: Log
) -> None:
    named = approvals.request(PEOPLE["staff"], SUPPORT).request
    everyone = approvals.request(PEOPLE["staff"], EVERYONE)
    rec = everyone.request
    assert named.approvers_required == 2 and rec.approvers_required == 3
    assert rec.all_subjects and rec.subjects == () and rec.to_json()["all_subjects"] is True
    requested = everyone.event
    assert requested.step == "requested" and requested.all_subjects is True
    assert requested.approvers_required == 3 and requested.subject_refs == []
    for who in OFFICERS[:2]:
        step = approvals.approve(rec.id, PEOPLE[who], "ok")
        assert step.grant is None and step.event.all_subjects is True
    last = approvals.approve(rec.id, PEOPLE["officer3"], "ok")
    assert last.grant is not None and last.grant.claims.all_subjects
    assert last.event.step == "granted" and last.event.all_subjects is True
    assert "every subject" in last.event.reason
    # A request for named subjects says nothing of all_subjects.
    assert all(e.all_subjects is None for e in approvals_events(ledger) if e.request_id == named.id)


def test_the_extra_approvers_are_configurable_and_capped(
    approvals: ApprovalService,
) -> None:
    approvals.config = replace(approvals.config, all_subjects_extra_approvers=0)
    assert approvals.request(PEOPLE["staff"], EVERYONE).request.approvers_required == 2
    approvals.config = replace(approvals.config, all_subjects_extra_approvers=MAX_APPROVERS)
    assert approvals.request(PEOPLE["staff"], EVERYONE).request.approvers_required == MAX_APPROVERS


def test_only_an_all_subjects_grant_releases_every_row(
    approvals: ApprovalService, runtime: PolicyRuntime
) -> None:
    request = PlanRequest(
        dataset="users",
        fields=("email", "location"),
        purpose="account recovery",
        ticket="SUP-77",
        ticket_subjects=("u1", "u2", "u3"),
    )
    engine = runtime.engine()
    scope = approvals.verify(
        grant(approvals, EVERYONE), PEOPLE["staff"], dataset="users", action=Action.READ
    )
    assert scope.all_subjects and scope.subjects == frozenset()
    plan = engine.plan(PEOPLE["staff"], request, grant=scope)
    assert plan.released == {"email": Transform.CLEAR, "location": Transform.CLEAR}
    assert plan.allowed_subjects == frozenset({"u1", "u2", "u3"})  # the ticket's alone
    assert plan.row_filter is not None and plan.row_filter.kind is RowFilterKind.TICKET_SUBJECTS
    assert not any(p.startswith("grant:") for p in plan.row_filter.policies)
    # A grant whose subjects are empty without all_subjects (an older request) opens no row.
    empty = replace(scope, all_subjects=False)
    assert engine.plan(PEOPLE["staff"], request, grant=empty).allowed_subjects == frozenset()


# ---------------------------------------------------------------- uses


def test_a_grant_is_used_once_by_default(approvals: ApprovalService, ledger: Log) -> None:
    token = grant(approvals, SUPPORT)
    scope = approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    assert scope.max_uses == 1
    assert approvals.use(scope, "r-1") == 1
    with pytest.raises(GrantRejected) as err:
        approvals.use(scope, "r-2")
    assert err.value.kind == "exhausted"
    with pytest.raises(GrantRejected) as err:  # the same use again is a replay, first
        approvals.use(scope, "r-1")
    assert err.value.kind == "replayed"
    # Approvers saw the number: in the request they approved and in every step's event.
    assert approvals.get(approvals_events(ledger)[-1].request_id).max_uses == 1
    assert {e.max_uses for e in approvals_events(ledger)} == {1}


def test_a_request_may_ask_for_more_uses_up_to_the_limit(approvals: ApprovalService) -> None:
    token = grant(approvals, SUPPORT.model_copy(update={"max_uses": 3}))
    scope = approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    assert [approvals.use(scope, f"r-{n}") for n in range(3)] == [1, 2, 3]
    with pytest.raises(GrantRejected) as err:
        approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ, use_id="r-9")
    assert err.value.kind == "exhausted"
    with pytest.raises(InputError) as too_many:
        approvals.request(PEOPLE["staff"], SUPPORT.model_copy(update={"max_uses": 101}))
    assert too_many.value.field == "max_uses"


def test_break_glass_sessions_have_their_own_default(approvals: ApprovalService) -> None:
    emergency = SUPPORT.model_copy(
        update={
            "justification_type": JustificationType.BREAK_GLASS,
            "justification_detail": "Welfare check requested by police: imminent danger",
            "duration_seconds": None,
        }
    )
    out = approvals.break_glass(PEOPLE["staff"], emergency)
    assert out.request.max_uses == 10 and out.event.max_uses == 10
    with pytest.raises(InputError):
        approvals.break_glass(
            PEOPLE["staff"], emergency.model_copy(update={"subjects": (), "all_subjects": True})
        )


def test_concurrent_uses_never_exceed_max_uses(approvals: ApprovalService) -> None:
    """Threads (each with its own connection) use one grant at once: exactly max_uses
    succeed, the check and the count being one transaction under the approvals lock."""
    token = grant(approvals, SUPPORT.model_copy(update={"max_uses": 3}))
    scope = approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    threads = 12
    start = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def use(n: int) -> None:
        start.wait()
        try:
            approvals.use(scope, f"use-{n}")
            result = "used"
        except GrantRejected as exc:
            result = exc.kind
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=use, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sorted(outcomes) == ["exhausted"] * (threads - 3) + ["used"] * 3
    rows = approvals.db.query(
        "SELECT COUNT(*) FROM access_grant_uses WHERE grant_id = ?", (scope.grant_id,)
    )
    assert int(rows[0][0]) == 3


def test_approval_settings() -> None:
    assert ApprovalConfig.from_settings(settings_from({}, {})) == ApprovalConfig()
    config = ApprovalConfig.from_settings(
        settings_from({"approvals": {"all_subjects_extra_approvers": 2, "default_max_uses": 5}}, {})
    )
    assert config.all_subjects_extra_approvers == 2 and config.default_max_uses == 5
    for bad in (
        {"all_subjects_extra_approvers": -1},
        {"all_subjects_extra_approvers": MAX_APPROVERS + 1},
        {"default_max_uses": 0},
        {"default_max_uses": True},
        {"default_max_uses": 500},
        {"max_use": 3},
    ):
        with pytest.raises(ConfigError):
            ApprovalConfig.from_settings(settings_from({"approvals": bad}, {}))
