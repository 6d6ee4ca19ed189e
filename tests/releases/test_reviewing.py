"""Recording reviews against a real git repository, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from release_helpers import ALICE, AUTHOR, BOB, CAROL, REPO_NAME, T0, Keys

from bastion.clock import FixedClock
from bastion.demo.release_sample import Person, commit_files
from bastion.errors import InputError
from bastion.releases.errors import ReleaseRejected
from bastion.releases.policy import ReleasePolicy
from bastion.releases.review import check_review
from bastion.releases.reviewing import (
    approved_review,
    check_review_chain,
    initialize_releases,
    record_review,
)
from bastion.store import Database


@pytest.fixture
def rdb(db: Database) -> Database:
    initialize_releases(db)
    initialize_releases(db)  # idempotent
    return db


def _review(
    db: Database,
    policy: ReleasePolicy,
    repo: Path,
    reviewers: list[tuple[str, object]],
    revision: str = "HEAD",
    verdict: str = "approve",
) -> object:
    return record_review(
        db,
        policy,
        repo_path=repo,
        repository=REPO_NAME,
        revision=revision,
        reviewers=reviewers,  # type: ignore[arg-type]
        verdict=verdict,
        scope="whole change",
        notes="checked data flows",
        clock=FixedClock(T0),
    )


def test_first_review_covers_whole_history_and_is_stored(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, commit = sample_repo
    rec = _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)])
    assert rec.predicate.range.base is None  # type: ignore[attr-defined]
    assert rec.predicate.range.head == commit  # type: ignore[attr-defined]
    assert rec.predicate.authors == [AUTHOR.email]  # type: ignore[attr-defined]
    assert len(rec.envelope.signatures) == 2  # type: ignore[attr-defined]
    stored = approved_review(rdb, REPO_NAME, commit)
    assert stored == rec.envelope  # type: ignore[attr-defined]
    assert check_review(stored, policy, repository=REPO_NAME, commit=commit).signers == (
        ALICE.email,
        BOB.email,
    )
    assert check_review_chain(rdb, REPO_NAME, commit) == 1


def test_range_starts_at_last_reviewed_commit(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, first = sample_repo
    _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)])
    # Alice writes the next two changes, committed by Erin; so Alice may not review them.
    erin = Person("Erin Eng", "erin@example.com")
    commit_files(repo, {"app/a.txt": "a\n"}, author=erin, when=T0 + timedelta(hours=1), message="a")
    second = commit_files(
        repo, {"app/b.txt": "b\n"}, author=ALICE, when=T0 + timedelta(hours=2), message="b"
    )
    with pytest.raises(ReleaseRejected) as err:
        _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)])
    assert err.value.code == "review.author_is_reviewer"
    rec = _review(rdb, policy, repo, [(BOB.email, keys.bob), (CAROL.email, keys.carol)])
    pred = rec.predicate  # type: ignore[attr-defined]
    assert (pred.range.base, pred.range.head, pred.commits) == (first, second, 2)
    assert pred.authors == [ALICE.email, erin.email]
    assert check_review_chain(rdb, REPO_NAME, second) == 2


@pytest.mark.parametrize(
    ("reviewers", "code"),
    [
        ([(AUTHOR.email, "dana"), (BOB.email, "bob")], "review.author_is_reviewer"),
        ([(ALICE.email, "alice")], "review.too_few_reviewers"),
        ([(ALICE.email, "alice"), (ALICE.email, "alice")], "review.duplicate_reviewer"),
        ([(ALICE.email, "attacker"), (BOB.email, "bob")], "review.key_mismatch"),
        ([("mallory@example.com", "attacker"), (BOB.email, "bob")], "review.unknown_reviewer"),
    ],
    ids=["author", "too_few", "duplicate", "wrong_key", "unknown"],
)
def test_refused_reviewers_store_nothing(
    rdb: Database,
    policy: ReleasePolicy,
    keys: Keys,
    sample_repo: tuple[Path, str],
    reviewers: list[tuple[str, str]],
    code: str,
) -> None:
    """Each reviewer set names (email, attribute of `keys` holding the key they sign with)."""
    repo, commit = sample_repo
    with pytest.raises(ReleaseRejected) as err:
        _review(rdb, policy, repo, [(email, getattr(keys, key)) for email, key in reviewers])
    assert err.value.code == code
    assert approved_review(rdb, REPO_NAME, commit) is None
    assert rdb.query("SELECT COUNT(*) FROM releases_reviews")[0][0] == 0


def test_co_author_trailer_counts_as_author(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, _ = sample_repo
    commit_files(
        repo,
        {"app/c.txt": "c\n"},
        author=AUTHOR,
        when=T0 + timedelta(hours=1),
        message=f"c\n\nCo-authored-by: Bob <{BOB.email.upper()}>",
    )
    with pytest.raises(ReleaseRejected) as err:
        _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)])
    assert err.value.code == "review.author_is_reviewer"


def test_unknown_revision_is_an_input_error(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, _ = sample_repo
    with pytest.raises(InputError):
        _review(
            rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)], revision="nope"
        )


def test_rejecting_review_does_not_make_a_commit_reviewed(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, commit = sample_repo
    _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)], verdict="reject")
    assert approved_review(rdb, REPO_NAME, commit) is None
    with pytest.raises(ReleaseRejected) as err:
        check_review_chain(rdb, REPO_NAME, commit)
    assert err.value.code == "review.unreviewed_commit"


def test_commit_already_approved(
    rdb: Database, policy: ReleasePolicy, keys: Keys, sample_repo: tuple[Path, str]
) -> None:
    repo, _ = sample_repo
    _review(rdb, policy, repo, [(ALICE.email, keys.alice), (BOB.email, keys.bob)])
    with pytest.raises(ReleaseRejected) as err:
        _review(rdb, policy, repo, [(CAROL.email, keys.carol), (BOB.email, keys.bob)])
    assert err.value.code == "review.already_reviewed"
