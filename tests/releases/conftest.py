"""Fixtures for release-assurance tests: keys, a policy, a sample repository; the real
witnessed log (``real_log``, ``witness_servers``) comes from ``tests/witnessed_log.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from release_helpers import (
    ALICE,
    AUTHOR,
    BOB,
    BUILDER_ID,
    CAROL,
    REPO_NAME,
    REPO_URI,
    T0,
    Keys,
    holder,
)

from bastion.demo.release_sample import init_sample_repo
from bastion.releases.policy import ReleasePolicy, RepositoryRule
from witnessed_log import RunningWitness, real_log, witness_servers

# The shared fixtures, re-exported so pytest finds them here (test_cli imports RunningWitness).
__all__ = ["RunningWitness", "real_log", "witness_servers"]


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(Ed25519PrivateKey.generate() for _ in range(8)))


@pytest.fixture
def policy(keys: Keys) -> ReleasePolicy:
    return ReleasePolicy(
        repositories=[RepositoryRule(name=REPO_NAME, uri=REPO_URI, required_reviewers=2)],
        reviewers=[
            holder(ALICE.email, keys.alice),
            holder(BOB.email, keys.bob),
            holder(CAROL.email, keys.carol),
            # Dana writes code and may review others' code, never her own.
            holder(AUTHOR.email, keys.dana),
        ],
        builders=[
            holder(BUILDER_ID, keys.builder),
            holder("https://other-builder.example", keys.other_builder),
        ],
    )


@pytest.fixture
def sample_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "sample-app"
    commit = init_sample_repo(repo, author=AUTHOR, when=T0)
    return repo, commit
