"""The custodian's approval: check everything, sign a VSA, append it to the ledger.

The ledger entry (a ``release.approval`` event) carries the VSA envelope and the provenance
and review envelopes it was computed from, so the log alone is the binary-transparency
history: every approved artifact, by whom it was built, from which commit, reviewed by whom.
The entry is appended *before* the approval is stored locally; an approval that could not be
logged does not exist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import Clock, iso
from bastion.errors import IntegrityError
from bastion.events import Actor, ReleaseApproval, encode_event
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.ledger.merkle import leaf_hash
from bastion.releases.dsse import Envelope, sign_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.policy import ReleasePolicy
from bastion.releases.provenance import check_provenance
from bastion.releases.review import check_review
from bastion.releases.reviewing import approved_review, check_review_chain
from bastion.releases.vsa import resource_uri, vsa_statement
from bastion.store import Database


@dataclass(frozen=True)
class ApprovedRelease:
    receipt: Receipt
    artifact_sha256: str
    app: str
    channel: str
    vsa: Envelope
    entry: bytes
    commit: str
    reviewers: tuple[str, ...]


def custodian_verifier_id(log_origin: str) -> str:
    """The VSA ``verifier.id`` for the custodian operating the log ``log_origin``."""
    return f"urn:bastion:custodian:{log_origin}"


def is_approved(db: Database, artifact_sha256: str, app: str, channel: str) -> int | None:
    rows = db.query(
        "SELECT log_index FROM releases_approvals WHERE app = ? AND channel = ? "
        "AND artifact_sha256 = ?",
        (app, channel, artifact_sha256),
    )
    return int(rows[0][0]) if rows else None


def approve_release(
    *,
    db: Database,
    ledger: LedgerWriter,
    policy: ReleasePolicy,
    custodian_key: Ed25519PrivateKey,
    verifier_id: str,
    actor: Actor,
    artifact: bytes,
    artifact_name: str,
    provenance: Envelope,
    app: str,
    channel: str,
    clock: Clock,
    reason: str = "release approved: reviewed source, trusted build",
) -> ApprovedRelease:
    uri = resource_uri(app, channel)
    sha256 = hashlib.sha256(artifact).hexdigest()
    prov = check_provenance(provenance, sha256, policy)
    review_env = approved_review(db, prov.repository.name, prov.commit)
    if review_env is None:
        raise ReleaseRejected(
            "review.unreviewed_commit",
            f"commit {prov.commit} of {prov.repository.name!r} has no approved review",
        )
    review = check_review(review_env, policy, repository=prov.repository.name, commit=prov.commit)
    check_review_chain(db, prov.repository.name, prov.commit)
    if is_approved(db, sha256, app, channel) is not None:
        raise ReleaseRejected("release.already_approved", f"{sha256} is already approved for {uri}")
    inputs = {"provenance": provenance, "review": review_env}
    statement = vsa_statement(
        artifact_name=artifact_name,
        artifact_sha256=sha256,
        verifier_id=verifier_id,
        time_verified=iso(clock.now()),
        app=app,
        channel=channel,
        policy=policy,
        inputs=inputs,
        verified_levels=policy.verified_levels,
    )
    vsa = sign_envelope(PAYLOAD_TYPE, statement.to_payload(), [custodian_key])
    event = ReleaseApproval(
        actor=actor,
        reason=reason,
        at=iso(clock.now()),
        artifact_sha256=sha256,
        app=app,
        channel=channel,
        vsa_envelope_sha256=vsa.sha256(),
        envelope=vsa.to_json(),
        attestations={k: v.to_json() for k, v in inputs.items()},
    )
    entry = encode_event(event)  # raises EntryTooLarge before anything is written
    receipt = ledger.append(event)
    if receipt.leaf_hash != leaf_hash(entry):
        raise IntegrityError("the ledger recorded different bytes than the approval encoded")
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO releases_approvals (app, channel, artifact_sha256, log_index, "
            "vsa_sha256, entry, approved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, channel, sha256, receipt.index, vsa.sha256(), entry, event.at),
        )
    return ApprovedRelease(
        receipt, sha256, app, channel, vsa, entry, prov.commit, tuple(review.signers)
    )
