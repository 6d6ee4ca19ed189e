"""The offline review check: independent, enough, named, approving reviewers of this commit."""

from __future__ import annotations

import pytest
from release_helpers import ALICE, AUTHOR, BOB, CAROL, COMMIT, REPO_NAME, Keys, review

from bastion.releases.errors import ReleaseRejected
from bastion.releases.policy import ReleasePolicy
from bastion.releases.review import check_review


def code(env: object, policy: ReleasePolicy, commit: str = COMMIT) -> str:
    with pytest.raises(ReleaseRejected) as err:
        check_review(env, policy, repository=REPO_NAME, commit=commit)  # type: ignore[arg-type]
    return err.value.code


def test_two_independent_reviewers_pass(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email])
    accepted = check_review(env, policy, repository=REPO_NAME, commit=COMMIT)
    assert accepted.signers == (ALICE.email, BOB.email)


def test_too_few_reviewers(keys: Keys, policy: ReleasePolicy) -> None:
    assert code(review([keys.alice], [ALICE.email]), policy) == "envelope.threshold"


def test_same_reviewer_twice_counts_once(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.alice], [ALICE.email])
    assert code(env, policy) == "envelope.threshold"


def test_review_by_the_author_is_rejected(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.dana], [ALICE.email, AUTHOR.email])
    assert code(env, policy) == "review.author_is_reviewer"


def test_author_match_is_case_insensitive(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email], authors=("ALICE@Example.com",))
    assert code(env, policy) == "review.author_is_reviewer"


def test_named_reviewer_must_have_signed(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email, CAROL.email])
    assert code(env, policy) == "review.unsigned_reviewer"


def test_unnamed_signer_does_not_count(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.carol], [ALICE.email])
    assert code(env, policy) == "envelope.threshold"


def test_untrusted_reviewer_keys(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.attacker, keys.builder], [ALICE.email, BOB.email])
    assert code(env, policy) == "envelope.threshold"


def test_unreviewed_commit(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email])
    assert code(env, policy, commit="c" * 40) == "review.unreviewed_commit"


def test_rejecting_verdict(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email], verdict="reject")
    assert code(env, policy) == "review.verdict"


def test_review_of_other_repository(keys: Keys, policy: ReleasePolicy) -> None:
    env = review([keys.alice, keys.bob], [ALICE.email, BOB.email], repository="other")
    assert code(env, policy) == "review.repository"
