"""Recording source reviews: git range, independence of reviewers, signatures, storage.

Reviews are kept in the Database (table ``releases_reviews``, both backends), one row per
review envelope. The range of a new review starts at the nearest *approved* reviewed ancestor
of the commit, so consecutive reviews chain back to the first commit; an approval requires
every link of that chain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import Clock, iso
from bastion.errors import InputError
from bastion.releases import git
from bastion.releases.dsse import Envelope, parse_envelope, public_key_bytes, sign_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.policy import ReleasePolicy
from bastion.releases.review import (
    ReviewerRef,
    ReviewPredicate,
    ReviewRange,
    check_review,
    review_statement,
)
from bastion.store import Database

REVIEWS_LOCK = "releases:reviews"
# Only the most recent reviews are candidates for the base of a new range; older ancestors
# only make the range longer, never shorter.
BASE_CANDIDATES = 64

DDL = [
    """CREATE TABLE IF NOT EXISTS releases_reviews (
        review_id TEXT PRIMARY KEY,
        seq {int} NOT NULL,
        repository TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        base_sha TEXT,
        verdict TEXT NOT NULL,
        envelope TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS releases_reviews_commit "
    "ON releases_reviews (repository, commit_sha)",
    """CREATE TABLE IF NOT EXISTS releases_approvals (
        app TEXT NOT NULL,
        channel TEXT NOT NULL,
        artifact_sha256 TEXT NOT NULL,
        log_index {int} NOT NULL,
        vsa_sha256 TEXT NOT NULL,
        entry {blob} NOT NULL,
        approved_at TEXT NOT NULL,
        PRIMARY KEY (app, channel, artifact_sha256)
    )""",
    # Tree sizes of the checkpoints handed out in evidence: later evidence carries consistency
    # proofs from them, so a client that verified an earlier release can check append-only.
    """CREATE TABLE IF NOT EXISTS releases_served_checkpoints (
        tree_size {int} PRIMARY KEY,
        served_at TEXT NOT NULL
    )""",
]


def initialize_releases(db: Database) -> None:
    db.migrate("releases", DDL)


@dataclass(frozen=True)
class RecordedReview:
    review_id: str
    envelope: Envelope
    predicate: ReviewPredicate


def approved_review(db: Database, repository: str, commit: str) -> Envelope | None:
    """The latest approving review envelope of ``commit``, or None if it was never approved."""
    rows = db.query(
        "SELECT envelope FROM releases_reviews WHERE repository = ? AND commit_sha = ? "
        "AND verdict = 'approve' ORDER BY seq DESC",
        (repository, commit),
    )
    return parse_envelope(json.loads(rows[0][0])) if rows else None


def review_base(db: Database, repository: str, commit: str) -> str | None:
    rows = db.query(
        "SELECT base_sha FROM releases_reviews WHERE repository = ? AND commit_sha = ? "
        "AND verdict = 'approve' ORDER BY seq DESC",
        (repository, commit),
    )
    if not rows:
        raise ReleaseRejected(
            "review.unreviewed_commit", f"commit {commit} of {repository!r} has no approved review"
        )
    base = rows[0][0]
    return str(base) if base is not None else None


def check_review_chain(db: Database, repository: str, commit: str) -> int:
    """Follow range bases back to the first commit; every link must be approved. Returns links."""
    seen: set[str] = set()
    current: str | None = commit
    while current is not None:
        if current in seen:
            raise ReleaseRejected("review.chain", f"review ranges loop at {current}")
        seen.add(current)
        current = review_base(db, repository, current)
    return len(seen)


def _nearest_reviewed_ancestor(
    db: Database, repo_path: Path, repository: str, head: str
) -> str | None:
    rows = db.query(
        "SELECT commit_sha FROM releases_reviews WHERE repository = ? AND verdict = 'approve' "
        "ORDER BY seq DESC LIMIT ?",
        (repository, BASE_CANDIDATES),
    )
    best: tuple[int, str] | None = None
    for (candidate,) in rows:
        if candidate == head or not git.is_ancestor(repo_path, candidate, head):
            continue
        distance = git.count_commits(repo_path, candidate, head)
        if best is None or distance < best[0]:
            best = (distance, candidate)
    return best[1] if best else None


def record_review(
    db: Database,
    policy: ReleasePolicy,
    *,
    repo_path: Path,
    repository: str,
    revision: str,
    reviewers: Sequence[tuple[str, Ed25519PrivateKey]],
    verdict: str,
    scope: str,
    notes: str,
    clock: Clock,
) -> RecordedReview:
    """Review ``revision`` of the repository at ``repo_path``; sign with every reviewer's key.

    Refuses (nothing stored) an unknown reviewer, a key that is not the reviewer's registered
    key, a reviewer named twice, a reviewer who authored or committed any change in the
    range, and fewer distinct reviewers than the repository requires.
    """
    rule = policy.repository(repository)
    if verdict not in ("approve", "reject"):
        raise InputError(f"verdict must be 'approve' or 'reject', not {verdict!r}")
    ids = [r[0] for r in reviewers]
    if len(set(ids)) != len(ids):
        raise ReleaseRejected("review.duplicate_reviewer", "a reviewer is named more than once")
    for reviewer_id, key in reviewers:
        holder = policy.reviewer(reviewer_id)
        if holder is None:
            raise ReleaseRejected(
                "review.unknown_reviewer", f"reviewer {reviewer_id!r} is not in policy"
            )
        if public_key_bytes(key.public_key()) != public_key_bytes(holder.trusted_key().key):
            raise ReleaseRejected(
                "review.key_mismatch", f"key given for {reviewer_id!r} is not their registered key"
            )
    if len(reviewers) < rule.required_reviewers:
        raise ReleaseRejected(
            "review.too_few_reviewers",
            f"{repository!r} requires {rule.required_reviewers} distinct reviewers, "
            f"{len(reviewers)} given",
        )
    head = git.resolve_commit(repo_path, revision)
    if verdict == "approve" and approved_review(db, repository, head) is not None:
        raise ReleaseRejected("review.already_reviewed", f"commit {head} is already approved")
    base = _nearest_reviewed_ancestor(db, repo_path, repository, head)
    authors = git.range_identities(repo_path, base, head)
    for reviewer_id, _ in reviewers:
        holder = policy.reviewer(reviewer_id)
        assert holder is not None
        if holder.identities() & set(authors):
            raise ReleaseRejected(
                "review.author_is_reviewer",
                f"reviewer {reviewer_id!r} authored or committed a change in "
                f"{(base or 'root')[:12]}..{head[:12]}",
            )
    predicate = ReviewPredicate(
        repository=repository,
        commit=head,
        range=ReviewRange(base=base, head=head),
        commits=git.count_commits(repo_path, base, head),
        authors=authors,
        reviewers=[ReviewerRef(id=i) for i in ids],
        verdict=verdict,
        scope=scope,
        notes=notes,
        reviewedAt=iso(clock.now()),
    )
    payload = review_statement(predicate).to_payload()
    envelope = sign_envelope(PAYLOAD_TYPE, payload, [k for _, k in reviewers])
    if verdict == "approve":
        # The stored review must pass the very check approvals and phones run.
        check_review(envelope, policy, repository=repository, commit=head)
    review_id = envelope.sha256()
    with db.transaction(lock=REVIEWS_LOCK) as cur:
        row = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM releases_reviews").fetchone()
        seq = int(row[0]) + 1 if row else 1
        cur.execute(
            "INSERT INTO releases_reviews (review_id, seq, repository, commit_sha, base_sha, "
            "verdict, envelope, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                review_id,
                seq,
                repository,
                head,
                base,
                verdict,
                json.dumps(envelope.to_json(), sort_keys=True),
                iso(clock.now()),
            ),
        )
    return RecordedReview(review_id, envelope, predicate)
