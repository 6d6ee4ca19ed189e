"""Shared constants and builders of signed test attestations for the release tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.releases.dsse import Envelope, public_key_to_b64, sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE, Statement
from bastion.releases.policy import KeyHolder
from bastion.releases.provenance import provenance_statement
from bastion.releases.review import (
    ReviewerRef,
    ReviewPredicate,
    ReviewRange,
    review_statement,
)
from bastion.releases.sample import Person

REPO_NAME = "sample-app"
REPO_URI = "https://git.example/sample-app"
BUILDER_ID = "https://builder.example/ci"

AUTHOR = Person("Dana Developer", "dana@example.com")
ALICE = Person("Alice Reviewer", "alice@example.com")
BOB = Person("Bob Reviewer", "bob@example.com")
CAROL = Person("Carol Reviewer", "carol@example.com")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Keys:
    alice: Ed25519PrivateKey
    bob: Ed25519PrivateKey
    carol: Ed25519PrivateKey
    dana: Ed25519PrivateKey
    builder: Ed25519PrivateKey
    other_builder: Ed25519PrivateKey
    attacker: Ed25519PrivateKey
    custodian: Ed25519PrivateKey


def holder(identity: str, key: Ed25519PrivateKey) -> KeyHolder:
    return KeyHolder(id=identity, public_key=public_key_to_b64(key.public_key()))


ARTIFACT = b"the app binary"
ARTIFACT_SHA = hashlib.sha256(ARTIFACT).hexdigest()
COMMIT = "a" * 40
BASE = "b" * 40


def provenance(
    key: Ed25519PrivateKey,
    *,
    repository_uri: str = "https://git.example/sample-app",
    commit: str = COMMIT,
    sha256: str = ARTIFACT_SHA,
    builder_id: str = "https://builder.example/ci",
    mutate: Any = None,
) -> Envelope:
    statement = provenance_statement(
        artifact_name="app.tar.gz",
        artifact_sha256=sha256,
        repository_uri=repository_uri,
        commit=commit,
        command=["python3", "build.py", "dist/app.tar.gz"],
        output="dist/app.tar.gz",
        builder_id=builder_id,
        invocation_id="inv-1",
        started_on="2026-01-01T00:00:00Z",
        finished_on="2026-01-01T00:01:00Z",
    )
    if mutate is not None:
        data = statement.model_dump(mode="json", by_alias=True, exclude_none=True)
        mutate(data)
        statement = Statement.model_validate(data)
    return sign_envelope(PAYLOAD_TYPE, statement.to_payload(), [key])


def review(
    keys: list[Ed25519PrivateKey],
    reviewers: list[str],
    *,
    commit: str = COMMIT,
    authors: tuple[str, ...] = ("dana@example.com",),
    verdict: str = "approve",
    repository: str = "sample-app",
) -> Envelope:
    predicate = ReviewPredicate(
        repository=repository,
        commit=commit,
        range=ReviewRange(base=BASE, head=commit),
        commits=1,
        authors=list(authors),
        reviewers=[ReviewerRef(id=r) for r in reviewers],
        verdict=verdict,  # type: ignore[arg-type]
        scope="full diff",
        notes="looks good",
        reviewedAt="2026-01-01T00:00:00Z",
    )
    return sign_envelope(PAYLOAD_TYPE, review_statement(predicate).to_payload(), keys)
