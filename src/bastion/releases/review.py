"""Source reviews: the predicate (https://bastion.dev/review/v1) and its offline check.

A review is an in-toto Statement v1 whose subject is the reviewed commit
(``digest.gitCommit``), in one DSSE envelope carrying one signature per reviewer. The
predicate names the repository, the commit, the range ``base..head`` it covers (``base`` is
the previous reviewed commit, or null for the whole history), the authors and committers of
that range (from git), the reviewers, the verdict, the scope and notes.

Pure, no I/O: the same check runs at approval time and on a phone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from bastion.releases.dsse import Envelope, verify_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE, ResourceDescriptor, Statement, parse_statement
from bastion.releases.policy import ReleasePolicy, StrictModel
from bastion.releases.slsa import parse_predicate

REVIEW_TYPE = "https://bastion.dev/review/v1"

_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _commit(value: str) -> str:
    if not _COMMIT.match(value):
        raise ValueError("must be a full lowercase hex commit id (40 or 64 characters)")
    return value


CommitId = Annotated[str, AfterValidator(_commit)]


class ReviewRange(StrictModel):
    base: CommitId | None = None
    """The previous approved reviewed commit; null when the range is the whole history."""
    head: CommitId


class ReviewerRef(StrictModel):
    id: str = Field(min_length=1, max_length=512)


class ReviewPredicate(StrictModel):
    repository: str = Field(min_length=1)
    commit: CommitId
    range: ReviewRange
    commits: int = Field(ge=1)
    authors: list[str]
    """Author and committer e-mail addresses of every commit in the range, lower-cased."""
    reviewers: list[ReviewerRef] = Field(min_length=1)
    verdict: Literal["approve", "reject"]
    scope: str = Field(min_length=1, max_length=4096)
    notes: str = Field(default="", max_length=16384)
    reviewedAt: str


def review_statement(predicate: ReviewPredicate) -> Statement:
    subject = ResourceDescriptor(name=predicate.repository, digest={"gitCommit": predicate.commit})
    return Statement(
        subject=[subject], predicateType=REVIEW_TYPE, predicate=predicate.model_dump(mode="json")
    )


@dataclass(frozen=True)
class AcceptedReview:
    predicate: ReviewPredicate
    signers: tuple[str, ...]
    envelope_sha256: str


def check_review(
    envelope: Envelope, policy: ReleasePolicy, *, repository: str, commit: str
) -> AcceptedReview:
    """Accept ``envelope`` as an approving review of ``commit`` by enough independent reviewers.

    Counted reviewers are distinct trusted keys that signed AND are named in the predicate;
    none of them may be among the range's authors or committers.
    """
    rule = policy.repository(repository)
    verified = verify_envelope(
        envelope,
        payload_type=PAYLOAD_TYPE,
        trusted=policy.reviewer_keys(),
        threshold=rule.required_reviewers,
        what="review",
    )
    statement = parse_statement(verified.payload, REVIEW_TYPE, "review")
    predicate = parse_predicate(ReviewPredicate, statement.predicate, "review")
    if predicate.repository != repository:
        raise ReleaseRejected(
            "review.repository", f"review is for {predicate.repository!r}, not {repository!r}"
        )
    if predicate.commit != commit or statement.subject_digests("gitCommit") != {commit}:
        raise ReleaseRejected(
            "review.unreviewed_commit", f"commit {commit} is not the reviewed commit"
        )
    if predicate.range.head != commit:
        raise ReleaseRejected("review.range", "review range head is not the reviewed commit")
    if predicate.verdict != "approve":
        raise ReleaseRejected("review.verdict", f"review verdict is {predicate.verdict!r}")
    named = {r.id for r in predicate.reviewers}
    unsigned = named - set(verified.signers)
    if unsigned:
        raise ReleaseRejected(
            "review.unsigned_reviewer", f"named reviewer(s) {sorted(unsigned)} did not sign"
        )
    counted = tuple(s for s in verified.signers if s in named)
    authors = {a.lower() for a in predicate.authors}
    for reviewer_id in counted:
        holder = policy.reviewer(reviewer_id)
        if holder is not None and holder.identities() & authors:
            raise ReleaseRejected(
                "review.author_is_reviewer",
                f"reviewer {reviewer_id!r} is an author or committer of the reviewed range",
            )
    if len(counted) < rule.required_reviewers:
        raise ReleaseRejected(
            "envelope.threshold",
            f"review: {len(counted)} named reviewer(s) signed, "
            f"{rule.required_reviewers} required for {repository!r}",
        )
    return AcceptedReview(predicate, counted, envelope.sha256())
