"""C2SP tlog-proof (https://c2sp.org/tlog-proof): an offline-verifiable proof of logging.

Pure functions, no I/O. The text format::

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <N>
    <base64 inclusion proof hash, leaf's sibling first>...
    <empty line>
    <the signed checkpoint, verbatim, with any witness cosignatures>

Verification needs only the entry, the log's vkey and, optionally, witness vkeys and a quorum.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.errors import IntegrityError
from bastion.ledger.checkpoint import Checkpoint, parse_checkpoint
from bastion.ledger.cosignature import CosignatureVerifier, Cosigner, open_cosigned_checkpoint
from bastion.ledger.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from bastion.ledger.note import KeyFormatError, Verifier, b64decode_strict, parse_note

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX_RE = re.compile(r"index (0|[1-9][0-9]{0,18})")


class TlogProofError(IntegrityError):
    """A tlog-proof bundle that is malformed or does not prove the entry."""


@dataclass(frozen=True)
class ParsedProof:
    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: str
    extra: bytes | None


@dataclass(frozen=True)
class VerifiedProof:
    index: int
    leaf_hash: bytes
    checkpoint: Checkpoint
    cosigners: tuple[Cosigner, ...]
    extra: bytes | None  # NOT authenticated: never trust it

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "leaf_hash": self.leaf_hash.hex(),
            "checkpoint": self.checkpoint.to_json(),
            "cosigners": [c.to_json() for c in self.cosigners],
            "extra": None if self.extra is None else base64.b64encode(self.extra).decode(),
        }


def _b64(text: str, what: str) -> bytes:
    try:
        return b64decode_strict(text, what)
    except KeyFormatError:
        raise TlogProofError(f"{what} is not valid base64") from None


def build_proof(
    entry: bytes,
    index: int,
    proof_hashes: Sequence[bytes],
    signed_checkpoint: str,
    extra: bytes | None = None,
) -> str:
    """Assemble a bundle; refuses one that would not verify against the checkpoint's root."""
    text, _ = parse_note(signed_checkpoint)
    cp = parse_checkpoint(text)
    verify_inclusion(leaf_hash(entry), index, cp.size, proof_hashes, cp.root_hash)
    lines = [HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode())
    lines.append(f"index {index}")
    lines.extend(base64.b64encode(h).decode() for h in proof_hashes)
    return "\n".join(lines) + "\n\n" + signed_checkpoint


def parse_proof(bundle: str | bytes) -> ParsedProof:
    """Strictly parse a bundle's syntax (no signature or proof checks)."""
    if isinstance(bundle, bytes):
        try:
            bundle = bundle.decode("utf-8")
        except UnicodeDecodeError:
            raise TlogProofError("tlog-proof is not valid UTF-8") from None
    head, sep, note = bundle.partition("\n\n")
    if not sep:
        raise TlogProofError("tlog-proof has no empty line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise TlogProofError(f"tlog-proof must start with {HEADER!r}")
    pos = 1
    extra: bytes | None = None
    if pos < len(lines) and lines[pos].startswith("extra "):
        extra = _b64(lines[pos][len("extra ") :], "tlog-proof extra data")
        pos += 1
    if pos >= len(lines):
        raise TlogProofError("tlog-proof has no index line")
    m = _INDEX_RE.fullmatch(lines[pos])
    if m is None:
        raise TlogProofError("tlog-proof index line is malformed")
    index = int(m.group(1))
    proof = []
    for i, line in enumerate(lines[pos + 1 :]):
        h = _b64(line, f"tlog-proof hash {i}")
        if len(h) != HASH_SIZE:
            raise TlogProofError(f"tlog-proof hash {i} is not {HASH_SIZE} bytes")
        proof.append(h)
    return ParsedProof(index, tuple(proof), note, extra)


def verify_proof(
    bundle: str | bytes,
    entry: bytes,
    log_verifier: Verifier,
    witness_verifiers: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> VerifiedProof:
    """Check the log's signature, the witness quorum, and the entry's inclusion proof."""
    parsed = parse_proof(bundle)
    cosigned = open_cosigned_checkpoint(
        parsed.checkpoint_note, log_verifier, witness_verifiers, quorum
    )
    cp = cosigned.checkpoint
    leaf = leaf_hash(entry)
    verify_inclusion(leaf, parsed.index, cp.size, parsed.proof, cp.root_hash)
    return VerifiedProof(parsed.index, leaf, cp, cosigned.cosigners, parsed.extra)
