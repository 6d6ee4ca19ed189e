"""Shared constants and builders of signed test attestations for the release tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.demo.release_sample import Person
from bastion.events import Actor, ReleaseApproval, encode_event
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
)
from bastion.ledger.note import NoteSigner
from bastion.ledger.tlogproof import build_proof
from bastion.releases.bundle import CustodianTrust, LogTrust, TrustBundle, WitnessTrust
from bastion.releases.dsse import Envelope, public_key_to_b64, sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE, Statement
from bastion.releases.policy import KeyHolder, ReleasePolicy
from bastion.releases.provenance import provenance_statement
from bastion.releases.review import (
    ReviewerRef,
    ReviewPredicate,
    ReviewRange,
    review_statement,
)
from bastion.releases.verify import ConsistencyProof, Evidence
from bastion.releases.vsa import vsa_statement

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


# --- an in-memory log double, for pure verifier tests that need forks ------------------------


ORIGIN = "log.test.example/releases"
VERIFIER_ID = "urn:bastion:custodian:" + ORIGIN


class ToyLog:
    """Entries in memory; checkpoints signed by the log key and cosigned by witnesses."""

    def __init__(self, signer: NoteSigner, witnesses: list[CosignatureSigner]) -> None:
        self.signer, self.witnesses = signer, witnesses
        self.leaves: list[bytes] = []

    def append(self, entry: bytes) -> int:
        self.leaves.append(leaf_hash(entry))
        return len(self.leaves) - 1

    def _node(self, level: int, index: int) -> bytes:
        return root_from_leaf_hashes(self.leaves[index << level : (index + 1) << level])

    def checkpoint_note(self, size: int | None = None, cosigners: int | None = None) -> str:
        size = len(self.leaves) if size is None else size
        cp = Checkpoint(ORIGIN, size, root_from_leaf_hashes(self.leaves[:size]))
        lines = [w.cosign(cp.body(), 1_767_225_600) for w in self.witnesses[:cosigners]]
        return sign_checkpoint(cp, self.signer) + "".join(lines)

    def evidence(
        self, entry: bytes, index: int, size: int | None = None, olds: tuple[int, ...] = ()
    ) -> Evidence:
        size = len(self.leaves) if size is None else size
        proof = build_proof(
            entry, index, inclusion_proof(index, size, self._node), self.checkpoint_note(size)
        )
        cons = tuple(
            ConsistencyProof(o, size, tuple(consistency_proof(o, size, self._node))) for o in olds
        )
        return Evidence(entry, proof, cons)


def approval_entry(
    keys: Keys,
    policy: ReleasePolicy,
    *,
    artifact: bytes = ARTIFACT,
    app: str = "com.example.app",
    channel: str = "stable",
    review_env: Envelope | None = None,
    provenance_env: Envelope | None = None,
    custodian_key: Ed25519PrivateKey | None = None,
) -> bytes:
    sha = hashlib.sha256(artifact).hexdigest()
    prov = provenance_env or provenance(keys.builder, sha256=sha)
    rev = review_env or review([keys.alice, keys.bob], [ALICE.email, BOB.email])
    inputs = {"provenance": prov, "review": rev}
    vsa = sign_envelope(
        PAYLOAD_TYPE,
        vsa_statement(
            artifact_name="app.tar.gz",
            artifact_sha256=sha,
            verifier_id=VERIFIER_ID,
            time_verified="2026-01-01T00:00:00Z",
            app=app,
            channel=channel,
            policy=policy,
            inputs=inputs,
            verified_levels=policy.verified_levels,
        ).to_payload(),
        [custodian_key or keys.custodian],
    )
    event = ReleaseApproval(
        actor=Actor(id="custodian"),
        reason="test",
        at="2026-01-01T00:00:00Z",
        artifact_sha256=sha,
        app=app,
        channel=channel,
        vsa_envelope_sha256=vsa.sha256(),
        envelope=vsa.to_json(),
        attestations={k: v.to_json() for k, v in inputs.items()},
    )
    return encode_event(event)


def trust_bundle(
    keys: Keys,
    policy: ReleasePolicy,
    log_vkey: str,
    witness_vkeys: list[str],
    quorum: int,
    *,
    expires_at: str = "2027-01-01T00:00:00Z",
) -> TrustBundle:
    return TrustBundle(
        issued_at="2025-12-01T00:00:00Z",
        expires_at=expires_at,
        custodian=CustodianTrust(
            verifier_id=VERIFIER_ID, keys=[holder("custodian", keys.custodian)]
        ),
        log=LogTrust(origin=ORIGIN, vkey=log_vkey),
        witnesses=WitnessTrust(vkeys=witness_vkeys, quorum=quorum),
        policy=policy,
    )
