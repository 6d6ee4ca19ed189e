"""Server side of the client check: assemble the evidence for an approved release.

Evidence = the approval's log entry + a C2SP tlog-proof (inclusion proof to a published,
witness-cosigned checkpoint) + consistency proofs from tree sizes clients may have seen: the
sizes this custodian served in earlier evidence and any the caller names (a client reports the
size it holds). Clients verify it with ``verify_release`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bastion.clock import Clock, iso
from bastion.errors import LedgerUnavailable
from bastion.ledger.checkpoint import parse_checkpoint
from bastion.ledger.note import parse_note
from bastion.ledger.tlogproof import build_proof
from bastion.releases.errors import ReleaseRejected
from bastion.releases.verify import MAX_CONSISTENCY_PROOFS, ConsistencyProof, Evidence
from bastion.store import Database


class ProofSource(Protocol):
    """What evidence needs from the log."""

    def checkpoint_note(self) -> str:
        """The newest published checkpoint, signed by the log, with witness cosignatures."""
        ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...


def release_evidence(
    db: Database,
    log: ProofSource,
    *,
    artifact_sha256: str,
    app: str,
    channel: str,
    clock: Clock,
    known_sizes: Iterable[int] = (),
) -> Evidence:
    rows = db.query(
        "SELECT log_index, entry FROM releases_approvals WHERE app = ? AND channel = ? "
        "AND artifact_sha256 = ?",
        (app, channel, artifact_sha256),
    )
    if not rows:
        raise ReleaseRejected(
            "artifact.not_approved", f"{artifact_sha256} is not approved for {app}/{channel}"
        )
    index, entry = int(rows[0][0]), bytes(rows[0][1])
    note = log.checkpoint_note()
    text, _ = parse_note(note)
    size = parse_checkpoint(text).size
    if size <= index:
        raise LedgerUnavailable(
            f"approval at index {index} is not yet in a published checkpoint (size {size}); "
            "publish a checkpoint first"
        )
    proof = build_proof(entry, index, log.inclusion_proof(index, size), note)
    served = [
        int(r[0])
        for r in db.query(
            "SELECT tree_size FROM releases_served_checkpoints WHERE tree_size < ? "
            "ORDER BY tree_size DESC LIMIT ?",
            (size, MAX_CONSISTENCY_PROOFS),
        )
    ]
    olds = sorted({s for s in (*known_sizes, *served) if 0 < s < size}, reverse=True)
    consistency = tuple(
        ConsistencyProof(old, size, tuple(log.consistency_proof(old, size)))
        for old in olds[:MAX_CONSISTENCY_PROOFS]
    )
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO releases_served_checkpoints (tree_size, served_at) VALUES (?, ?) "
            "ON CONFLICT (tree_size) DO NOTHING",
            (size, iso(clock.now())),
        )
    return Evidence(entry, proof, consistency)
