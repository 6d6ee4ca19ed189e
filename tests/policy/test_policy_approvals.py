"""Approvals on both backends: N distinct approvers, no self-approval, Cedar-checked
approvers, signed request-bound grants that expire, revoke and refuse replay; break-glass
with alert and review. Every step is in the ledger."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import FixedClock
from bastion.errors import InputError, IntegrityError, LedgerUnavailable
from bastion.events import Approval
from bastion.ledger.log import Log
from bastion.policy import (
    AccessRequestSpec,
    Action,
    ApprovalRefused,
    ApprovalService,
    BreakGlassAlert,
    GrantClaims,
    GrantRejected,
    JustificationType,
    PlanRequest,
    PolicyRuntime,
    Transform,
)
from bastion.policy.grants import key_id, sign_grant
from bastion.store import Database

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

EMERGENCY = AccessRequestSpec(
    dataset="users",
    fields=("email", "location"),
    subjects=("u1",),
    justification_type=JustificationType.BREAK_GLASS,
    justification_detail="Welfare check requested by police: imminent danger to the user",
    purpose="life safety",
)


def steps(ledger: Log) -> list[str]:
    return [e.step for e in recorded(ledger) if isinstance(e, Approval)]


def last(ledger: Log) -> Approval:
    event = recorded(ledger)[-1]
    assert isinstance(event, Approval)
    return event


def granted(approvals: ApprovalService, spec: AccessRequestSpec = SUPPORT) -> tuple[str, str]:
    """A request approved by two officers: (request id, grant token)."""
    req = approvals.request(PEOPLE["staff"], spec).request
    approvals.approve(req.id, PEOPLE["officer1"], "verified the ticket")
    out = approvals.approve(req.id, PEOPLE["officer2"], "verified with the user")
    assert out.grant is not None
    return req.id, out.grant.token


def test_request_asks_for_the_approvers_policy_requires(
    approvals: ApprovalService, ledger: Log
) -> None:
    out = approvals.request(PEOPLE["staff"], SUPPORT)
    rec = out.request
    assert rec.status == "pending" and rec.approvers_required == 2
    assert rec.requester.employer == "custodian" and rec.requester.location_country == "US"
    event = last(ledger)
    assert event.step == "requested" and event.request_sha256 == rec.request_sha256
    assert event.justification_type == "customer_initiated_support"
    assert event.fields == ["email", "location"] and event.approvers_required == 2
    assert rec.ledger_index == out.receipt.index


def test_two_distinct_approvers_issue_a_signed_time_boxed_grant(
    approvals: ApprovalService, ledger: Log, runtime: PolicyRuntime
) -> None:
    req = approvals.request(PEOPLE["staff"], SUPPORT).request
    first = approvals.approve(req.id, PEOPLE["officer1"], "ok")
    assert first.grant is None and first.request.approvers == ("sam",)
    with pytest.raises(ApprovalRefused) as dup:
        approvals.approve(req.id, PEOPLE["officer1"], "ok again")
    assert dup.value.kind == "duplicate-approval"
    second = approvals.approve(req.id, PEOPLE["officer2"], "ok")
    assert second.grant is not None and second.request.status == "granted"
    claims = second.grant.claims
    assert claims.principal == "alice" and claims.request_sha256 == req.request_sha256
    assert set(claims.approvers) == {"sam", "pat"}
    assert claims.expires_at - claims.issued_at == timedelta(hours=1)
    assert steps(ledger)[-4:] == ["requested", "approved", "refused", "approved", "granted"][-4:]
    assert last(ledger).grant_id == claims.grant_id

    scope = approvals.verify(
        second.grant.token, PEOPLE["staff"], dataset="users", action=Action.READ
    )
    assert scope.approvals == 2 and scope.subjects == frozenset({"u1"})
    plan = runtime.engine().plan(
        PEOPLE["staff"],
        PlanRequest(
            dataset="users",
            fields=("email", "location"),
            purpose="account recovery",
            ticket="SUP-77",
            ticket_subjects=("u1", "u2"),
        ),
        grant=scope,
    )
    assert plan.released == {"email": Transform.CLEAR, "location": Transform.CLEAR}
    assert plan.allowed_subjects == frozenset({"u1"}) and plan.grant_id == claims.grant_id


def test_the_requester_can_never_approve(approvals: ApprovalService, ledger: Log) -> None:
    req = approvals.request(PEOPLE["staff"], SUPPORT).request
    with pytest.raises(ApprovalRefused) as err:
        approvals.approve(req.id, PEOPLE["staff"], "I approve myself")
    assert err.value.kind == "self-approval"
    refused = last(ledger)
    assert refused.step == "refused" and refused.alert is True and refused.actor.id == "alice"
    assert err.value.receipt is not None
    assert approvals.get(req.id).approvers == ()


@pytest.mark.parametrize("who", ["moderator", "officer_no_mfa", "covered_staff", "auditor"])
def test_only_principals_policy_allows_may_approve(
    approvals: ApprovalService, ledger: Log, who: str
) -> None:
    req = approvals.request(PEOPLE["staff"], SUPPORT).request
    with pytest.raises(ApprovalRefused) as err:
        approvals.approve(req.id, PEOPLE[who], "sure")
    assert err.value.kind == "not-an-approver"
    assert last(ledger).step == "refused"
    with pytest.raises(ApprovalRefused):
        approvals.deny(req.id, PEOPLE[who], "no")
    assert approvals.get(req.id).status == "pending"


def test_a_grant_expires_with_the_clock(
    approvals: ApprovalService, ledger: Log, clock: FixedClock
) -> None:
    _, token = granted(approvals)
    approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    clock.advance(timedelta(hours=1))
    with pytest.raises(GrantRejected) as err:
        approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    assert err.value.kind == "expired"
    expired = approvals.expire_due()
    assert [e.step for e in expired] == ["expired"] and last(ledger).step == "expired"
    assert approvals.expire_due() == []  # recorded once


def test_revocation(approvals: ApprovalService, ledger: Log) -> None:
    req_id, token = granted(approvals)
    grant_id = approvals.get(req_id).grant_id
    assert grant_id is not None
    with pytest.raises(ApprovalRefused) as err:
        approvals.revoke(grant_id, PEOPLE["moderator"], "I dislike it")
    assert err.value.kind == "not-an-approver"
    out = approvals.revoke(grant_id, PEOPLE["officer3"], "the ticket was closed")
    assert out.event.step == "revoked" and out.event.grant_id == grant_id
    with pytest.raises(GrantRejected) as rej:
        approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)
    assert rej.value.kind == "revoked"
    with pytest.raises(ApprovalRefused) as again:
        approvals.revoke(grant_id, PEOPLE["officer3"], "twice")
    assert again.value.kind == "not-active"


def test_the_holder_may_give_up_a_grant(approvals: ApprovalService) -> None:
    req_id, _ = granted(approvals)
    grant_id = approvals.get(req_id).grant_id
    assert grant_id
    assert approvals.revoke(grant_id, PEOPLE["staff"], "done early").event.step == "revoked"


def test_a_replayed_use_is_refused(approvals: ApprovalService) -> None:
    _, token = granted(approvals, SUPPORT.model_copy(update={"max_uses": 3}))
    approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ, use_id="r-1")
    approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ, use_id="r-2")
    with pytest.raises(GrantRejected) as err:
        approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ, use_id="r-1")
    assert err.value.kind == "replayed"


def test_a_grant_is_bound_to_its_holder_and_scope(approvals: ApprovalService) -> None:
    _, token = granted(approvals)
    other = PEOPLE["staff_no_mfa"]
    with pytest.raises(GrantRejected) as err:
        approvals.verify(token, other, dataset="users", action=Action.READ)
    assert err.value.kind == "wrong-principal"
    for kwargs in (
        {"dataset": "users", "action": Action.READ, "fields": ("phone",)},
        {"dataset": "users", "action": Action.EXPORT},
        {"dataset": "videos", "action": Action.READ},
    ):
        with pytest.raises(GrantRejected) as err:
            approvals.verify(token, PEOPLE["staff"], **kwargs)  # type: ignore[arg-type]
        assert err.value.kind == "out-of-scope"


def _tamper(token: str, part: int, edit: object) -> str:
    pieces = token.split(".")
    raw = base64.urlsafe_b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4))
    raw = edit(raw)  # type: ignore[operator]
    pieces[part] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return ".".join(pieces)


def test_tampered_or_foreign_grants_are_refused(
    approvals: ApprovalService, grant_key: Ed25519PrivateKey
) -> None:
    _, token = granted(approvals)

    def verify(t: str) -> None:
        approvals.verify(t, PEOPLE["staff"], dataset="users", action=Action.READ)

    flipped_sig = _tamper(token, 2, lambda b: bytes([b[0] ^ 1]) + b[1:])
    widened = _tamper(
        token,
        1,
        lambda b: b.replace(
            b'"fields":["email","location"]', b'"fields":["email","location","phone"]'
        ),
    )
    other_key = Ed25519PrivateKey.generate()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    claims = GrantClaims.from_json(payload)
    foreign = sign_grant(claims, other_key)
    for bad, kind in (
        (flipped_sig, "bad-signature"),
        (widened, "bad-signature"),
        (foreign, "bad-signature"),
        ("bgrant1.x", "malformed"),
        ("eyJhbGciOi.x.y", "malformed"),
    ):
        with pytest.raises(GrantRejected) as err:
            verify(bad)
        assert err.value.kind == kind, bad
    # Signed with the right key but never issued (e.g. forged with a stolen key offline).
    from dataclasses import replace

    unissued = sign_grant(
        replace(claims, grant_id="gr_forged", key_id=key_id(grant_key.public_key())), grant_key
    )
    with pytest.raises(GrantRejected) as err:
        verify(unissued)
    assert err.value.kind == "unknown-grant"


def test_a_request_edited_in_the_database_breaks_its_grant(
    approvals: ApprovalService, policy_db: Database
) -> None:
    req_id, token = granted(approvals)
    rows = policy_db.query("SELECT canonical FROM access_requests WHERE id = ?", (req_id,))
    doc = json.loads(rows[0][0])
    doc["subjects"] = ["u1", "u2", "u3"]
    with policy_db.transaction() as cur:
        cur.execute(
            "UPDATE access_requests SET canonical = ? WHERE id = ?", (json.dumps(doc), req_id)
        )
    with pytest.raises(IntegrityError):
        approvals.verify(token, PEOPLE["staff"], dataset="users", action=Action.READ)


def test_denied_and_lapsed_requests_take_no_more_approvals(
    approvals: ApprovalService, ledger: Log, clock: FixedClock
) -> None:
    a = approvals.request(PEOPLE["staff"], SUPPORT).request
    assert approvals.deny(a.id, PEOPLE["officer1"], "no ticket evidence").request.status == "denied"
    with pytest.raises(ApprovalRefused) as err:
        approvals.approve(a.id, PEOPLE["officer2"], "late")
    assert err.value.kind == "not-pending"
    b = approvals.request(PEOPLE["staff"], SUPPORT).request
    clock.advance(timedelta(days=3))
    with pytest.raises(ApprovalRefused) as err:
        approvals.approve(b.id, PEOPLE["officer1"], "late")
    assert err.value.kind == "lapsed"
    assert approvals.get(b.id).status == "expired" and last(ledger).step == "expired"
    with pytest.raises(ApprovalRefused) as err:
        approvals.approve("ar_nope", PEOPLE["officer1"], "?")
    assert err.value.kind == "unknown-request"


def test_requests_no_approval_could_satisfy_are_refused(approvals: ApprovalService) -> None:
    for who in ("moderator", "covered_engineer", "ad_partner"):
        with pytest.raises(ApprovalRefused) as err:
            approvals.request(PEOPLE[who], SUPPORT)
        assert err.value.kind == "denied-by-policy"


def test_request_input_errors(approvals: ApprovalService) -> None:
    with pytest.raises(InputError, match="at least 10"):
        approvals.request(PEOPLE["staff"], SUPPORT.model_copy(update={"justification_detail": "x"}))
    with pytest.raises(InputError, match="maximum"):
        approvals.request(
            PEOPLE["staff"], SUPPORT.model_copy(update={"duration_seconds": 30 * 86400})
        )
    with pytest.raises(InputError) as err:
        approvals.request(PEOPLE["staff"], SUPPORT.model_copy(update={"fields": ("ssn",)}))
    assert err.value.field == "ssn"


def test_listing(approvals: ApprovalService) -> None:
    granted(approvals)
    approvals.request(PEOPLE["staff"], SUPPORT)
    assert [r.status for r in approvals.list_requests(status="pending")] == ["pending"]
    assert len(approvals.list_requests(requester_id="alice")) == 2


# ---------------------------------------------------------------- break-glass


def test_break_glass_is_immediate_alerts_and_opens_a_review(
    approvals: ApprovalService, ledger: Log, clock: FixedClock, runtime: PolicyRuntime
) -> None:
    alerts: list[BreakGlassAlert] = []
    approvals.alert_hooks.append(alerts.append)
    out = approvals.break_glass(PEOPLE["staff"], EMERGENCY)
    assert out.grant is not None and out.review_id is not None
    assert out.request.kind == "break-glass" and out.request.approvers_required == 0
    event = last(ledger)
    assert event.step == "break-glass" and event.alert is True
    assert event.review_id == out.review_id and event.grant_id == out.grant.grant_id
    assert len(alerts) == 1 and alerts[0].review_id == out.review_id
    assert approvals.counters.break_glass == 1
    # Short: 30 minutes by default.
    assert out.grant.expires_at - out.grant.claims.issued_at == timedelta(minutes=30)

    scope = approvals.verify(out.grant.token, PEOPLE["staff"], dataset="users", action=Action.READ)
    plan = runtime.engine().plan(
        PEOPLE["staff"], PlanRequest(dataset="users", fields=("email", "location")), grant=scope
    )
    assert plan.break_glass and plan.released == {
        "email": Transform.CLEAR,
        "location": Transform.CLEAR,
    }
    assert plan.allowed_subjects == frozenset({"u1"})

    reviews = approvals.reviews(status="pending")
    assert [r.id for r in reviews] == [out.review_id]
    clock.advance(timedelta(minutes=31))
    with pytest.raises(GrantRejected):
        approvals.verify(out.grant.token, PEOPLE["staff"], dataset="users", action=Action.READ)
    clock.advance(timedelta(hours=72))
    assert [r.id for r in approvals.overdue_reviews()] == [out.review_id]


def test_break_glass_review_must_be_someone_else_allowed_to_approve(
    approvals: ApprovalService, ledger: Log
) -> None:
    out = approvals.break_glass(PEOPLE["staff"], EMERGENCY)
    assert out.review_id
    for who, kind in (("staff", "self-review"), ("moderator", "not-an-approver")):
        with pytest.raises(ApprovalRefused) as err:
            approvals.review(out.review_id, PEOPLE[who], "justified", "fine")
        assert err.value.kind == kind
    done = approvals.review(
        out.review_id, PEOPLE["officer1"], "justified", "police request on file"
    )
    assert done.event.step == "reviewed" and done.event.review_id == out.review_id
    assert approvals.reviews(status="justified")[0].reviewer_id == "sam"
    with pytest.raises(ApprovalRefused) as err:
        approvals.review(out.review_id, PEOPLE["officer2"], "unjustified", "again")
    assert err.value.kind == "already-reviewed"


def test_break_glass_needs_justification_subjects_and_stays_short(
    approvals: ApprovalService,
) -> None:
    for update, message in (
        ({"justification_type": JustificationType.CUSTOMER_INITIATED_SUPPORT}, "break-glass needs"),
        ({"justification_detail": "because"}, "at least 10"),
        ({"subjects": ()}, "must name the subjects"),
        ({"duration_seconds": 4 * 3600}, "at most"),
    ):
        with pytest.raises(InputError, match=message):
            approvals.break_glass(PEOPLE["staff"], EMERGENCY.model_copy(update=update))


@pytest.mark.parametrize("who", ["moderator", "covered_staff", "engineer_abroad"])
def test_break_glass_refused_to_whom_policy_does_not_allow(
    approvals: ApprovalService, ledger: Log, who: str
) -> None:
    with pytest.raises(ApprovalRefused) as err:
        approvals.break_glass(PEOPLE[who], EMERGENCY)
    assert err.value.kind == "not-permitted"
    assert last(ledger).step == "refused" and last(ledger).alert is True
    assert approvals.reviews() == []


def test_a_failing_alert_hook_does_not_undo_the_record(approvals: ApprovalService) -> None:
    def broken(alert: BreakGlassAlert) -> None:
        raise RuntimeError("pager down")

    approvals.alert_hooks.append(broken)
    out = approvals.break_glass(PEOPLE["staff"], EMERGENCY)
    assert out.grant is not None and approvals.counters.alert_hook_failures == 1


def test_concurrent_last_approvals_issue_exactly_one_grant(
    approvals: ApprovalService, ledger: Log, policy_db: Database
) -> None:
    import threading

    req = approvals.request(PEOPLE["staff"], SUPPORT).request
    grants: list[object] = []
    errors: list[BaseException] = []

    def approve(who: str) -> None:
        try:
            out = approvals.approve(req.id, PEOPLE[who], "concurrent")
            if out.grant is not None:
                grants.append(out.grant)
        except ApprovalRefused as exc:  # approvals arriving after the grant are refused
            errors.append(exc)

    threads = [
        threading.Thread(target=approve, args=(w,)) for w in ("officer1", "officer2", "officer3")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(grants) == 1
    assert all(isinstance(e, ApprovalRefused) and e.kind == "not-pending" for e in errors)
    assert steps(ledger).count("granted") == 1
    rows = policy_db.query("SELECT COUNT(*) FROM access_grants WHERE request_id = ?", (req.id,))
    assert rows[0][0] == 1
    assert approvals.get(req.id).status == "granted"


def test_a_ledger_outage_while_granting_leaves_no_grant(
    approvals: ApprovalService, ledger: Log, policy_db: Database
) -> None:
    req = approvals.request(PEOPLE["staff"], SUPPORT).request
    approvals.approve(req.id, PEOPLE["officer1"], "ok")
    real_append = ledger.append
    calls = {"n": 0}

    def flaky(event: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the "granted" event, after the approval itself was recorded
            raise LedgerUnavailable("ledger down")
        return real_append(event)  # type: ignore[arg-type]

    approvals.ledger = type("Flaky", (), {"append": staticmethod(flaky)})()  # type: ignore[assignment]
    with pytest.raises(LedgerUnavailable):
        approvals.approve(req.id, PEOPLE["officer2"], "ok")
    approvals.ledger = ledger
    assert approvals.get(req.id).status == "pending"
    assert policy_db.query("SELECT COUNT(*) FROM access_grants")[0][0] == 0
    # Once the ledger is back, the last approver asks again: the grant is issued, and the
    # approval is not counted twice.
    retry = approvals.approve(req.id, PEOPLE["officer2"], "ledger is back")
    assert retry.grant is not None and set(retry.request.approvers) == {"sam", "pat"}
    assert steps(ledger).count("granted") == 1
