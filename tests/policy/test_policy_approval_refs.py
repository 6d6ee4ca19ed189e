"""Approval events go to a public log: subjects appear only as keyed refs, never as ids.

Every step (requested, refused, approved, granted, denied, revoked, expired, break-glass,
reviewed) is written and its entry bytes scanned; a subject acting as a principal is named
by ref; a ref function that hands back ids, or the wrong number of refs, stops the step
before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import FixedClock
from bastion.errors import IntegrityError
from bastion.events import Approval
from bastion.ledger.log import Log
from bastion.policy import (
    AccessRequestSpec,
    ApprovalRefused,
    ApprovalService,
    JustificationType,
    PolicyRuntime,
    PublicText,
)
from bastion.store import Database

from .conftest import PEOPLE, commit_text, fake_subject_refs, recorded

SUBJECTS = ("u-41", "u-42", "carol@example.com")


def spec(**over: object) -> AccessRequestSpec:
    data: dict[str, object] = {
        "dataset": "users",
        "fields": ("email", "location"),
        "subjects": SUBJECTS,
        "justification_type": JustificationType.CUSTOMER_INITIATED_SUPPORT,
        "justification_detail": "The user asked us to find their stolen phone",
        "ticket": "SUP-7",
        "purpose": "account recovery",
        "duration_seconds": 3600,
    }
    data.update(over)
    return AccessRequestSpec.model_validate(data)


def test_every_step_names_subjects_by_ref_only(
    approvals: ApprovalService, ledger: Log, clock: FixedClock
) -> None:
    start = ledger.size()
    rid = approvals.request(PEOPLE["staff"], spec()).request.id
    with pytest.raises(ApprovalRefused):
        approvals.approve(rid, PEOPLE["staff"], "me")  # self-approval, recorded
    approvals.approve(rid, PEOPLE["officer1"], "ok")
    grant = approvals.approve(rid, PEOPLE["officer2"], "ok").grant
    assert grant is not None
    approvals.revoke(grant.grant_id, PEOPLE["officer1"], "done")
    other = approvals.request(PEOPLE["staff"], spec(ticket="SUP-8")).request.id
    approvals.deny(other, PEOPLE["officer1"], "no")
    lapsing = approvals.request(PEOPLE["staff"], spec(ticket="SUP-9")).request.id
    bg = approvals.break_glass(
        PEOPLE["staff"],
        spec(
            justification_type=JustificationType.BREAK_GLASS,
            justification_detail="Welfare check requested by police",
            duration_seconds=600,
        ),
    )
    assert bg.review_id is not None
    approvals.review(bg.review_id, PEOPLE["officer1"], "justified", "confirmed")
    clock.advance(timedelta(days=4))
    assert approvals.expire_due()
    assert approvals.get(lapsing).status == "expired"

    events = [e for e in recorded(ledger)[start:] if isinstance(e, Approval)]
    entries = [ledger.entry(i) for i in range(start, ledger.size())]
    seen = {e.step for e in events}
    assert {"requested", "refused", "approved", "granted", "revoked", "denied"} <= seen
    assert {"break-glass", "reviewed", "expired"} <= seen
    expected = fake_subject_refs(sorted(SUBJECTS))
    for event in events:
        assert event.subjects is None
        if event.request_sha256 is not None:  # a step about a request lists its subjects
            assert sorted(event.subject_refs or []) == sorted(expected)
    for entry in entries:
        for subject in SUBJECTS:
            assert subject.encode() not in entry
    # The database keeps the raw ids the grant binds; only the public log is keyed.
    assert approvals.get(rid).subjects == tuple(sorted(SUBJECTS))


def test_a_subject_acting_is_named_by_ref(approvals: ApprovalService, ledger: Log) -> None:
    subject = PEOPLE["subject"]  # id "u1", role subject
    with pytest.raises(ApprovalRefused):
        approvals.request(subject, spec(subjects=("u1",)))
    event = recorded(ledger)[-1]
    assert isinstance(event, Approval) and event.step == "refused"
    assert event.actor.kind == "subject" and event.actor.id == fake_subject_refs(["u1"])[0]
    assert b'"u1"' not in ledger.entry(ledger.size() - 1)


@pytest.mark.parametrize(
    "broken",
    [
        lambda ids: list(ids),  # the identity: raw ids
        lambda ids: fake_subject_refs(ids)[:-1],  # one ref short
        lambda ids: [*fake_subject_refs(ids)[:-1], ids[-1]],  # one raw id among refs
    ],
    ids=["identity", "too-few", "one-raw"],
)
def test_a_ref_function_that_leaks_stops_the_step(
    policy_db: Database,
    ledger: Log,
    clock: FixedClock,
    runtime: PolicyRuntime,
    broken: object,
) -> None:
    def refs(ids: Sequence[str]) -> list[str]:
        return broken(ids)  # type: ignore[operator,no-any-return]

    service = ApprovalService(
        policy_db,
        ledger,
        clock,
        runtime.engine,
        Ed25519PrivateKey.generate(),
        subject_refs=refs,
        public_text=PublicText(policy_db, commit_text),
    )
    before = ledger.size()
    with pytest.raises(IntegrityError, match="raw or missing"):
        service.request(PEOPLE["staff"], spec())
    assert ledger.size() == before
    assert service.list_requests() == []


def test_no_service_without_a_ref_function(
    policy_db: Database, ledger: Log, clock: FixedClock, runtime: PolicyRuntime
) -> None:
    with pytest.raises(TypeError):
        ApprovalService(  # type: ignore[call-arg]
            policy_db,
            ledger,
            clock,
            runtime.engine,
            Ed25519PrivateKey.generate(),
            public_text=PublicText(policy_db, commit_text),
        )


def test_subject_count_fits_one_entry(approvals: ApprovalService, ledger: Log) -> None:
    """At the cap, every step's entry (refs for all subjects) still fits 64 KiB."""
    many = tuple(f"user-{n:06d}" for n in range(approvals.config.max_subjects))
    rid = approvals.request(PEOPLE["staff"], spec(subjects=many)).request.id
    approvals.approve(rid, PEOPLE["officer1"], "ok")
    assert approvals.approve(rid, PEOPLE["officer2"], "ok").grant is not None
    assert max(len(ledger.entry(i)) for i in range(ledger.size())) < 64 * 1024
    with pytest.raises(Exception, match="at most"):
        approvals.request(PEOPLE["staff"], spec(subjects=(*many, "one-more")))
