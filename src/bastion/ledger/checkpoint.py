"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the signed tree head.

Pure functions, no I/O. The note text is the origin line, the tree size in decimal (no leading
zeroes), the base64 root hash, and optional non-empty extension lines, each ending in a newline.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.errors import IntegrityError
from bastion.ledger.merkle import HASH_SIZE
from bastion.ledger.note import (
    KeyFormatError,
    NoteSigner,
    Verifier,
    b64decode_strict,
    open_note,
    sign_note,
)

MAX_TREE_SIZE = (1 << 63) - 1
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")


class CheckpointError(IntegrityError):
    """A checkpoint that is malformed, for another log, or not signed by the log's key."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError("checkpoint size out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError("checkpoint root hash must be 32 bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise ValueError("checkpoint extension lines must be non-empty single lines")

    def body(self) -> str:
        """The note text: every line, including the last, ends in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "extensions": list(self.extensions),
        }


def parse_checkpoint(text: str) -> Checkpoint:
    """Strictly parse a checkpoint body (the note text, not the signatures)."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs an origin, a tree size and a root hash")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    if not _SIZE_RE.fullmatch(size_line) or int(size_line) > MAX_TREE_SIZE:
        raise CheckpointError(f"checkpoint tree size {size_line[:40]!r} is not a canonical number")
    try:
        root = b64decode_strict(root_line, "checkpoint root hash")
    except KeyFormatError:
        raise CheckpointError("checkpoint root hash is not valid base64") from None
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_line:
        raise CheckpointError("checkpoint root hash is not a canonical 32-byte base64 value")
    if any(not e for e in extensions):
        raise CheckpointError("checkpoint extension lines must be non-empty")
    return Checkpoint(origin, int(size_line), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner, existing: Sequence[str] = ()) -> str:
    """The checkpoint as a signed note (the log's signature first, then any `existing` lines)."""
    return sign_note(cp.body(), [signer], existing)


def open_checkpoint(
    note: str | bytes, log_verifier: Verifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify the log's signature and parse the body.

    The origin must equal `origin`, by default the log key's name: a log signs under its origin,
    so a checkpoint its key made for another log identity is refused.
    """
    opened = open_note(note, [log_verifier])
    cp = parse_checkpoint(opened.text)
    expected = log_verifier.name if origin is None else origin
    if cp.origin != expected:
        raise CheckpointError(
            f"checkpoint origin {cp.origin[:100]!r} is not the expected {expected!r}"
        )
    return cp
