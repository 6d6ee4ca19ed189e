"""What every destination transports: one delivery, file by file.

    <flow>/<manifest_id>/manifest.dsse.json   the signed manifest (DSSE envelope, JSON)
                        entry.json           the ledger entry (egress.manifest event, RFC 8785)
                        proof.tlog-proof     C2SP tlog-proof of the entry in a cosigned checkpoint
                        chunk-00000.hpke     the HPKE ciphertexts, in order, contiguous from 0
                        ...
                        COMPLETE             written last: the destination's commit marker

Names are fixed or match ``chunk-NNNNN.hpke``, so no name can climb out of its directory;
``check_layout`` refuses anything else. ``DirectorySource`` reads a delivery from a directory
one file at a time, so the verifier never holds more than one chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from bastion.egress.errors import EgressRejected
from bastion.egress.manifest import (
    MAX_CHUNKS,
    envelope_bytes,
    is_flow_name,
    manifest_digest,
    peek_manifest,
)
from bastion.egress.payload import seal_chunk
from bastion.events import MAX_ENTRY_BYTES
from bastion.releases.dsse import Envelope

MANIFEST_FILE = "manifest.dsse.json"
ENTRY_FILE = "entry.json"
PROOF_FILE = "proof.tlog-proof"
COMPLETE_FILE = "COMPLETE"
REQUIRED_FILES = (MANIFEST_FILE, ENTRY_FILE, PROOF_FILE)

MAX_MANIFEST_BYTES = 1 << 20  # the DSSE envelope limit
MAX_PROOF_BYTES = 256 * 1024  # 64 proof hashes and a checkpoint with its cosignatures fit easily
MAX_COMPLETE_BYTES = 4096
MAX_CHUNK_BYTES = 1 << 34  # refuse an absurd file before reading it, not an honest chunk

_CHUNK = re.compile(r"^chunk-([0-9]{5})\.hpke$")
_MANIFEST_ID = re.compile(r"^[0-9a-f]{32}$")


def chunk_file_name(index: int) -> str:
    return f"chunk-{index:05d}.hpke"


def max_bytes(name: str) -> int:
    """How large the file ``name`` may be."""
    return {
        MANIFEST_FILE: MAX_MANIFEST_BYTES,
        ENTRY_FILE: MAX_ENTRY_BYTES,
        PROOF_FILE: MAX_PROOF_BYTES,
        COMPLETE_FILE: MAX_COMPLETE_BYTES,
    }.get(name, MAX_CHUNK_BYTES)


@dataclass(frozen=True)
class Layout:
    chunks: int
    """Chunk files present (contiguous from 0)."""
    complete: bool


def check_layout(names: Iterable[str], *, require_complete: bool = True) -> Layout:
    """Check a delivery's file names: the three fixed files, contiguous chunks from 0, the
    marker. Codes: ``egress.layout`` (an unknown or missing file), ``egress.chunk.missing``
    (a gap, or no chunk), ``egress.incomplete`` (no COMPLETE marker)."""
    indexes: set[int] = set()
    seen: set[str] = set()
    for name in names:
        match = _CHUNK.match(name)
        if match:
            indexes.add(int(match.group(1)))
        elif name not in (*REQUIRED_FILES, COMPLETE_FILE):
            raise EgressRejected("egress.layout", f"unexpected file {name!r} in the delivery")
        seen.add(name)
    for name in REQUIRED_FILES:
        if name not in seen:
            raise EgressRejected("egress.layout", f"the delivery has no {name}")
    if require_complete and COMPLETE_FILE not in seen:
        raise EgressRejected(
            "egress.incomplete", f"the delivery has no {COMPLETE_FILE} marker (still arriving?)"
        )
    count = len(indexes)
    if count == 0:
        raise EgressRejected("egress.chunk.missing", "the delivery has no chunk")
    if max(indexes) != count - 1:
        gap = min(set(range(max(indexes) + 1)) - indexes)
        raise EgressRejected(
            "egress.chunk.missing", f"{chunk_file_name(gap)} is missing (chunks are not contiguous)"
        )
    return Layout(count, COMPLETE_FILE in seen)


def _check_ids(flow: str, manifest_id: str) -> None:
    if not is_flow_name(flow):
        raise EgressRejected("egress.layout", f"flow name {flow!r} is not a safe directory name")
    if not _MANIFEST_ID.match(manifest_id):
        raise EgressRejected("egress.layout", f"manifest id {manifest_id!r} is not 32 hex")


@dataclass(frozen=True)
class Delivery:
    """One run's delivery in memory (what a destination sends)."""

    flow: str
    manifest_id: str
    envelope: bytes
    """``manifest.dsse.json``: the DSSE envelope's JSON."""
    entry: bytes
    """``entry.json``: the ledger entry, exactly as appended."""
    proof: str
    """``proof.tlog-proof``: C2SP tlog-proof of ``entry``."""
    chunks: tuple[bytes, ...]
    """The HPKE ciphertexts, in order."""

    def __post_init__(self) -> None:
        _check_ids(self.flow, self.manifest_id)
        if not 1 <= len(self.chunks) <= MAX_CHUNKS:
            raise EgressRejected(
                "egress.layout", f"a delivery has 1 to {MAX_CHUNKS} chunks, not {len(self.chunks)}"
            )

    @property
    def path(self) -> str:
        """``<flow>/<manifest_id>``: where a destination puts the files."""
        return f"{self.flow}/{self.manifest_id}"

    def files(self) -> list[tuple[str, bytes]]:
        """The files in the order to write them; ``COMPLETE`` last."""
        return [
            (MANIFEST_FILE, self.envelope),
            (ENTRY_FILE, self.entry),
            (PROOF_FILE, self.proof.encode("utf-8")),
            *((chunk_file_name(i), c) for i, c in enumerate(self.chunks)),
            (COMPLETE_FILE, f"{self.manifest_id} {len(self.chunks)}\n".encode()),
        ]

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes],
        *,
        flow: str | None = None,
        manifest_id: str | None = None,
    ) -> Delivery:
        """Rebuild a delivery from its files (names validated; ``COMPLETE`` optional). Without
        ``flow`` and ``manifest_id`` they are read from the manifest, unverified: that only
        routes the delivery; ``verify`` checks everything."""
        layout = check_layout(files, require_complete=False)
        for name, data in files.items():
            if len(data) > max_bytes(name):
                raise EgressRejected("egress.layout", f"{name} exceeds {max_bytes(name)} bytes")
        if flow is None or manifest_id is None:
            predicate = peek_manifest(files[MANIFEST_FILE]).predicate
            flow = predicate.flow if flow is None else flow
            manifest_id = predicate.manifest_id if manifest_id is None else manifest_id
        try:
            proof = files[PROOF_FILE].decode("utf-8")
        except UnicodeDecodeError:
            raise EgressRejected("egress.layout", f"{PROOF_FILE} is not UTF-8") from None
        return cls(
            flow=flow,
            manifest_id=manifest_id,
            envelope=files[MANIFEST_FILE],
            entry=files[ENTRY_FILE],
            proof=proof,
            chunks=tuple(files[chunk_file_name(i)] for i in range(layout.chunks)),
        )


# --- reading a delivery --------------------------------------------------------------------


class DeliverySource(Protocol):
    """Where the verifier reads a delivery's files from, one at a time."""

    @property
    def label(self) -> str:
        """How error messages name the delivery (a path, a manifest id)."""
        ...

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes:
        """The file's bytes; ``egress.layout`` if it is missing or larger than it may be."""
        ...


class MemorySource:
    def __init__(self, delivery: Delivery) -> None:
        self._files = dict(delivery.files())
        self.label = delivery.path

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> bytes:
        try:
            return self._files[name]
        except KeyError:
            raise EgressRejected("egress.layout", f"the delivery has no {name}") from None


class DirectorySource:
    """A delivery directory. Only regular files count (a symlink or a directory inside it is
    refused), and each file is read bounded, without following links."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    def names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            raise EgressRejected("egress.layout", f"no delivery at {self.path}") from None
        except OSError as exc:
            raise EgressRejected("egress.layout", f"{self.path}: {exc.strerror}") from None
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                raise EgressRejected(
                    "egress.layout", f"{entry.name!r} in {self.path} is not a regular file"
                )
        return sorted(e.name for e in entries)

    def read(self, name: str) -> bytes:
        if name not in (*REQUIRED_FILES, COMPLETE_FILE) and not _CHUNK.match(name):
            raise EgressRejected("egress.layout", f"unexpected file {name!r} in the delivery")
        limit = max_bytes(name)
        try:
            fd = os.open(self.path / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise EgressRejected("egress.layout", f"the delivery has no {name}") from None
        except OSError as exc:
            raise EgressRejected("egress.layout", f"{name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise EgressRejected("egress.layout", f"{name} is not a regular file")
            if info.st_size > limit:
                raise EgressRejected("egress.layout", f"{name} exceeds {limit} bytes")
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise EgressRejected("egress.layout", f"{name} exceeds {limit} bytes")
        return data


def seal_delivery(
    *,
    envelope: Envelope,
    entry: bytes,
    proof: str,
    plaintexts: Iterable[bytes],
    recipient: X25519PublicKey,
) -> Delivery:
    """The delivery of a logged manifest: each chunk plaintext sealed to ``recipient`` under
    the manifest's digest, index and count. ``plaintexts`` are the chunks the manifest's
    subjects hash (checked here, so a runner cannot seal what it did not sign)."""
    manifest = peek_manifest(envelope)
    predicate = manifest.predicate
    digest = manifest_digest(envelope)
    chunks = []
    for i, plaintext in enumerate(plaintexts):
        listed = manifest.chunk_sha256[i] if i < predicate.chunks else None
        if hashlib.sha256(plaintext).hexdigest() != listed:
            raise ValueError(f"chunk {i} is not the chunk the manifest lists")
        chunks.append(seal_chunk(plaintext, recipient, digest, i, predicate.chunks))
    if len(chunks) != predicate.chunks:
        raise ValueError(f"{len(chunks)} chunks for a manifest of {predicate.chunks}")
    return Delivery(
        flow=predicate.flow,
        manifest_id=predicate.manifest_id,
        envelope=envelope_bytes(envelope),
        entry=entry,
        proof=proof,
        chunks=tuple(chunks),
    )
