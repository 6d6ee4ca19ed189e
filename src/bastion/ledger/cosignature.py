"""C2SP tlog-cosignature v1 (https://c2sp.org/tlog-cosignature), Ed25519 ``cosignature/v1``.

Pure functions, no I/O. A witness signs ``cosignature/v1\\ntime <T>\\n`` followed by the
checkpoint body; the note signature is the 8-byte big-endian timestamp T followed by the Ed25519
signature, under a key ID computed with signature type 0x04. The Ed25519 message does not commit
to the witness name, so a quorum counts distinct *public keys*, never names or lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import IntegrityError
from bastion.ledger.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from bastion.ledger.note import (
    NamedPrivateKey,
    NamedPublicKey,
    Verifier,
    open_note,
    signature_line,
)

ALG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = (1 << 63) - 1


class QuorumError(IntegrityError):
    """Fewer distinct witnesses than required cosigned the checkpoint."""


def cosigned_message(checkpoint_body: str, timestamp: int) -> bytes:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("cosignature timestamp out of range")
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_body}".encode()


@dataclass(frozen=True)
class CosignatureVerifier(NamedPublicKey):
    """Verifies one witness's cosignature/v1 signatures (a `note.Verifier`)."""

    ALG: ClassVar[int] = ALG_COSIGNATURE_V1

    @staticmethod
    def timestamp(signature: bytes) -> int:
        """The time a (verified) cosignature claims, POSIX seconds."""
        return int.from_bytes(signature[:8], "big")

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != 8 + 64:
            return False
        ts = int.from_bytes(signature[:8], "big")
        if ts > MAX_TIMESTAMP:
            return False
        message = f"cosignature/v1\ntime {ts}\n".encode() + text
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key_bytes).verify(signature[8:], message)
        except InvalidSignature:
            return False
        return True


class CosignatureSigner(NamedPrivateKey):
    """A witness's signing key: produces cosignature/v1 note signature lines."""

    ALG: ClassVar[int] = ALG_COSIGNATURE_V1

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self._name, self._key_id, self._public)

    def cosign(self, checkpoint_body: str, time: int) -> str:
        """One note signature line, newline-terminated, cosigning `checkpoint_body` at `time`."""
        parse_checkpoint(checkpoint_body)  # only ever cosign a well-formed checkpoint
        sig = self._key.sign(cosigned_message(checkpoint_body, time))
        return signature_line(self._name, self._key_id, time.to_bytes(8, "big") + sig)


@dataclass(frozen=True)
class Cosigner:
    name: str
    key_id: int
    timestamp: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "key_id": f"{self.key_id:08x}", "timestamp": self.timestamp}


@dataclass(frozen=True)
class CosignedCheckpoint:
    checkpoint: Checkpoint
    cosigners: tuple[Cosigner, ...]


def open_cosigned_checkpoint(
    note: str | bytes,
    log_verifier: Verifier,
    witness_verifiers: Iterable[CosignatureVerifier] = (),
    quorum: int = 0,
    *,
    origin: str | None = None,
) -> CosignedCheckpoint:
    """Check the log's signature, every known witness cosignature, and a quorum of witnesses.

    A quorum counts distinct witness public keys: a key listed twice, or signing twice under
    two names, counts once. Any invalid signature by a known key rejects the note.
    """
    witnesses = list(witness_verifiers)
    if quorum < 0:
        raise ValueError("quorum must be non-negative")
    distinct_keys = {w.public_key_bytes for w in witnesses}
    if quorum > len(distinct_keys):
        raise QuorumError(
            f"a quorum of {quorum} witnesses is impossible with {len(distinct_keys)} witness keys"
        )
    all_verifiers: list[Verifier] = [log_verifier, *witnesses]
    opened = open_note(note, all_verifiers)
    if not any(
        s.name == log_verifier.name and s.key_id == log_verifier.key_id for s in opened.verified
    ):
        raise CheckpointError("checkpoint is not signed by the log's key")
    cp = parse_checkpoint(opened.text)
    expected = log_verifier.name if origin is None else origin
    if cp.origin != expected:
        raise CheckpointError(
            f"checkpoint origin {cp.origin[:100]!r} is not the expected {expected!r}"
        )
    by_id = {(w.name, w.key_id): w for w in witnesses}
    cosigners: list[Cosigner] = []
    signed_keys: set[bytes] = set()
    for sig in opened.verified:
        w = by_id.get((sig.name, sig.key_id))
        if w is None:
            continue  # the log's own signature
        signed_keys.add(w.public_key_bytes)
        cosigners.append(
            Cosigner(sig.name, sig.key_id, CosignatureVerifier.timestamp(sig.signature))
        )
    if len(signed_keys) < quorum:
        raise QuorumError(
            f"checkpoint has {len(signed_keys)} valid witness cosignatures; {quorum} required"
        )
    return CosignedCheckpoint(cp, tuple(cosigners))


def verify_cosignatures(
    note: str | bytes,
    log_verifier: Verifier,
    witness_verifiers: Sequence[CosignatureVerifier],
    quorum: int,
) -> Checkpoint:
    """The checkpoint, once signed by the log and cosigned by `quorum` distinct witness keys."""
    return open_cosigned_checkpoint(note, log_verifier, witness_verifiers, quorum).checkpoint
