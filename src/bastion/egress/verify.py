"""The recipient's check of one delivery, offline: ``verify_delivery``.

From the delivery's files, the trust bundle and the recipient's X25519 private key, in order
(stop at the first failure; write nothing):

1. the manifest's DSSE signature verifies under a custodian key of the bundle;
2. the ledger entry is included in a checkpoint signed by the bundle's log and cosigned by a
   quorum of its witnesses, and that entry is the ``egress.manifest`` event embedding exactly
   this envelope;
3. there are exactly ``predicate.chunks`` chunk files; each opens with HPKE under the context
   (manifest digest, index, count) and its plaintext hashes to the manifest's subject digest;
4. each chunk's Parquet schema is the manifest's, and holds only the fields the bundle declares
   for the flow (plus ``_row`` and ``_op``); the rows and tombstones add up to the manifest's.
   The manifest's own column list is checked against the bundle before any chunk is opened, so
   a recipient never decrypts a column it must not hold. Steps 3 and 4 run chunk by chunk: one
   chunk's ciphertext and plaintext are in memory at a time, the plaintext staged to disk;
5. replay: the state has not accepted this manifest id, and the run follows the last accepted
   run of the flow (``run == last + 1`` and ``previous_manifest == last id``);
6. only then the staged Parquet files are moved into ``out/<flow>/<manifest_id>/`` and the
   manifest is recorded in the state, both under the state's lock.

Imports only formats (egress.manifest/payload/delivery/trust, releases' DSSE, the ledger's
verifier modules): no database, no server. ``docs/EGRESS-PROTOCOL.md`` is the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.durable import fsync_dir
from bastion.egress.delivery import (
    ENTRY_FILE,
    MANIFEST_FILE,
    PROOF_FILE,
    DeliverySource,
    DirectorySource,
    check_layout,
    chunk_file_name,
)
from bastion.egress.errors import EgressRejected
from bastion.egress.manifest import (
    RESERVED_COLUMNS,
    Manifest,
    chunk_subject_name,
    parse_manifest,
    peek_manifest,
)
from bastion.egress.payload import chunk_schema, columns_of, count_ops, open_chunk
from bastion.egress.replay import ReplayState, SqliteReplayState
from bastion.egress.trust import EgressTrust
from bastion.errors import BastionError
from bastion.events import MAX_ENTRY_BYTES, EgressManifest, decode_event
from bastion.ledger.tlogproof import VerifiedProof, verify_proof
from bastion.releases.dsse import parse_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.strictjson import JsonRefused, loads_canonical

RECEIVED_MANIFEST = "manifest.json"
"""Written beside the Parquet files in ``out``: the verified statement and where it was logged."""


# --- result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    step: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.step, "detail": self.detail}


@dataclass
class VerifiedDelivery:
    flow: str
    manifest_id: str
    run: int
    previous_manifest: str | None
    rows: int
    tombstones: int
    chunks: int
    manifest_sha256: str
    signers: tuple[str, ...]
    log_index: int
    checkpoint: dict[str, Any]
    out: str | None = None
    files: list[str] = field(default_factory=list)
    recorded: bool = False
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "flow": self.flow,
            "manifest_id": self.manifest_id,
            "run": self.run,
            "previous_manifest": self.previous_manifest,
            "rows": self.rows,
            "tombstones": self.tombstones,
            "chunks": self.chunks,
            "manifest_sha256": self.manifest_sha256,
            "signers": list(self.signers),
            "log_index": self.log_index,
            "checkpoint": self.checkpoint,
            "out": self.out,
            "files": self.files,
            "recorded": self.recorded,
            "checks": [c.to_json() for c in self.checks],
        }


# --- the steps -----------------------------------------------------------------------------


def _check_log(trust: EgressTrust, entry: bytes, proof: bytes) -> VerifiedProof:
    try:
        return verify_proof(
            proof,
            entry,
            trust.log_verifier(),
            trust.witness_verifiers(),
            trust.quorum,
        )
    except BastionError as exc:
        raise EgressRejected(
            "egress.inclusion", f"the manifest's entry is not proven in the log: {exc}"
        ) from None


def _check_entry(entry: bytes, manifest: Manifest) -> EgressManifest:
    def mismatch(message: str) -> EgressRejected:
        return EgressRejected("egress.entry.mismatch", message)

    try:
        loads_canonical(entry, max_bytes=MAX_ENTRY_BYTES)
        event = decode_event(entry)
    except (JsonRefused, ValueError):
        raise mismatch("the log entry is not a canonical Bastion event") from None
    if not isinstance(event, EgressManifest):
        raise mismatch(f"the log entry is a {event.type!r} event, not egress.manifest")
    try:
        logged = parse_envelope(event.envelope)
    except ReleaseRejected:
        raise mismatch("the logged envelope is malformed") from None
    if logged != manifest.envelope:
        raise mismatch("the log entry holds another manifest envelope than the one delivered")
    p = manifest.predicate
    figures = {
        "manifest_id": (event.manifest_id, p.manifest_id),
        "flow": (event.flow, p.flow),
        "flow_version": (event.flow_version, p.flow_version),
        "recipient": (event.recipient, p.recipient),
        "run": (event.run, p.run),
        "chunks": (event.chunks, p.chunks),
        "rows": (event.rows, p.rows),
        "tombstones": (event.tombstones, p.tombstones),
        "cursor_after": (event.cursor_after, p.cursor.after),
        "cursor_through": (event.cursor_through, p.cursor.through),
    }
    for name, (logged_value, signed_value) in figures.items():
        if logged_value != signed_value:
            raise mismatch(f"the log entry's {name} is not the manifest's")
    return event


def _check_columns(manifest: Manifest, allowed: frozenset[str]) -> None:
    extra = [name for name in manifest.predicate.fields if name not in allowed]
    if extra:
        raise EgressRejected(
            "egress.schema.extra_column",
            f"column {extra[0]!r} is not a field the trust bundle declares for flow "
            f"{manifest.predicate.flow!r}",
        )


def _check_chunk_schema(
    index: int, plaintext: bytes, manifest: Manifest, allowed: frozenset[str]
) -> tuple[int, int]:
    """The chunk's ``(rows, tombstones)`` once its columns are the manifest's."""
    schema, rows = chunk_schema(plaintext)
    got = [(c.name, c.type) for c in columns_of(schema)]
    want = [(c.name, c.type) for c in manifest.predicate.columns]
    if got != want:
        extra = [n for n, _ in got if n not in allowed and n not in RESERVED_COLUMNS]
        if extra:
            raise EgressRejected(
                "egress.schema.extra_column",
                f"chunk {index} has column {extra[0]!r}, which the trust bundle does not "
                f"declare for flow {manifest.predicate.flow!r}",
            )
        raise EgressRejected(
            "egress.schema.mismatch",
            f"chunk {index}'s columns {[f'{n}:{t}' for n, t in got]} are not the manifest's "
            f"{[f'{n}:{t}' for n, t in want]}",
        )
    upserts, deletes = count_ops(plaintext)
    if upserts + deletes != rows:
        raise EgressRejected(
            "egress.chunk.format", f"chunk {index} has _op values other than upsert and delete"
        )
    return rows, deletes


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _publisher(staging: Path, final: Path) -> Callable[[], None]:
    def publish() -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Left by an attempt that published and then failed to record: it was verified,
            # but is replaced by this verified copy rather than trusted as it lies.
            trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, trash / final.name)
            shutil.rmtree(trash)
        os.replace(staging, final)
        fsync_dir(final.parent)

    return publish


def verify_delivery(
    source: DeliverySource | Path,
    trust: EgressTrust,
    recipient_key: X25519PrivateKey,
    *,
    state: ReplayState | None = None,
    out: Path | None = None,
) -> VerifiedDelivery:
    """Verify one delivery (the six steps above). Raises ``EgressRejected`` with a stable code
    on the first failure and leaves nothing in ``out`` and nothing recorded. Without ``out``
    it is a check only: nothing is written or recorded (the replay check still runs)."""
    src = DirectorySource(source) if isinstance(source, Path) else source
    checks: list[Check] = []
    layout = check_layout(src.names())

    # 1. signature
    manifest = parse_manifest(src.read(MANIFEST_FILE), trust.trusted_keys())
    p = manifest.predicate
    allowed = trust.flow_fields(p.flow)
    if allowed is None:
        raise EgressRejected("egress.flow.unknown", f"the trust bundle has no flow {p.flow!r}")
    digest = manifest.digest
    checks.append(Check("signature", f"signed by {list(manifest.signers)}"))

    # 2. inclusion in a cosigned checkpoint, of the entry that embeds this envelope
    entry = src.read(ENTRY_FILE)
    proof = _check_log(trust, entry, src.read(PROOF_FILE))
    _check_entry(entry, manifest)
    cp = proof.checkpoint
    checks.append(
        Check(
            "inclusion",
            f"entry {proof.index} in tree of size {cp.size}, "
            f"{len(proof.cosigners)} witness cosignature(s), quorum {trust.quorum}",
        )
    )

    # 3 and 4, chunk by chunk (the manifest's columns against the bundle first)
    if layout.chunks < p.chunks:
        raise EgressRejected(
            "egress.chunk.missing",
            f"{chunk_file_name(layout.chunks)} is missing: {layout.chunks} of {p.chunks} chunks",
        )
    if layout.chunks > p.chunks:
        raise EgressRejected(
            "egress.chunk.extra",
            f"{chunk_file_name(p.chunks)} is beyond the manifest's {p.chunks} chunk(s)",
        )
    _check_columns(manifest, allowed)
    staging: Path | None = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{p.manifest_id}.partial-"))
    try:
        total_rows = total_deletes = 0
        for i in range(p.chunks):
            plaintext = open_chunk(src.read(chunk_file_name(i)), recipient_key, digest, i, p.chunks)
            if hashlib.sha256(plaintext).hexdigest() != manifest.chunk_sha256[i]:
                raise EgressRejected(
                    "egress.chunk.tampered",
                    f"chunk {i}'s plaintext does not hash to the manifest's digest",
                )
            rows, deletes = _check_chunk_schema(i, plaintext, manifest, allowed)
            total_rows, total_deletes = total_rows + rows, total_deletes + deletes
            if staging is not None:
                _write_synced(staging / chunk_subject_name(i), plaintext)
            del plaintext
        if total_rows != p.rows + p.tombstones or total_deletes != p.tombstones:
            raise EgressRejected(
                "egress.rows.mismatch",
                f"the chunks hold {total_rows - total_deletes} rows and {total_deletes} "
                f"tombstones; the manifest says {p.rows} and {p.tombstones}",
            )
        checks.append(Check("chunks", f"{p.chunks} chunk(s) opened, digests match"))
        checks.append(
            Check(
                "schema",
                f"{len(p.fields)} declared field(s); {p.rows} rows, {p.tombstones} tombstones",
            )
        )

        # 5. replay
        if state is not None:
            state.check(p)
            checks.append(Check("replay", f"run {p.run} of {p.flow!r} is new and in order"))

        result = VerifiedDelivery(
            flow=p.flow,
            manifest_id=p.manifest_id,
            run=p.run,
            previous_manifest=p.previous_manifest,
            rows=p.rows,
            tombstones=p.tombstones,
            chunks=p.chunks,
            manifest_sha256=digest.hex(),
            signers=manifest.signers,
            log_index=proof.index,
            checkpoint={
                "origin": cp.origin,
                "size": cp.size,
                "root_hash": cp.root_hash.hex(),
                "cosigners": [c.name for c in proof.cosigners],
            },
            checks=checks,
        )

        # 6. publish and record
        if out is not None and staging is not None:
            received = {
                "statement": json.loads(manifest.envelope.payload),
                "manifest_sha256": digest.hex(),
                "log_index": proof.index,
                "checkpoint": result.checkpoint,
            }
            _write_synced(
                staging / RECEIVED_MANIFEST,
                json.dumps(received, indent=2, sort_keys=True).encode() + b"\n",
            )
            final = out / p.flow / p.manifest_id
            publish = _publisher(staging, final)
            if state is not None:
                state.accept(p, digest.hex(), publish)
                result.recorded = True
            else:
                publish()
            staging = None
            result.out = str(final)
            result.files = [chunk_subject_name(i) for i in range(p.chunks)] + [RECEIVED_MANIFEST]
            checks.append(Check("written", f"{p.chunks} Parquet file(s) in {final}"))
        return result
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def pending_deliveries(root: Path, state: SqliteReplayState | None = None) -> list[Path]:
    """The deliveries under ``root`` to verify, in order: ``root`` itself if it is one, else
    every ``<flow>/<manifest_id>/`` (the files destination's layout) holding a manifest, not
    yet accepted by ``state``, by flow then run. The order comes from the manifests unverified;
    each is then verified in full, so a wrong order only fails, never admits."""
    if (root / MANIFEST_FILE).is_file():
        return [root]
    found: list[tuple[str, int, Path]] = []
    for path in sorted(root.glob(f"*/*/{MANIFEST_FILE}")):
        delivery = path.parent
        try:
            predicate = peek_manifest(DirectorySource(delivery).read(MANIFEST_FILE)).predicate
        except EgressRejected:
            found.append(("", 0, delivery))  # verified in turn, and refused with its reason
            continue
        if state is None or not state.seen(predicate.manifest_id):
            found.append((predicate.flow, predicate.run, delivery))
    return [path for _, _, path in sorted(found)]
