"""The offline release check an app's update checker embeds: ``verify_release``.

Given the artifact's bytes, the evidence the custodian publishes for it and the trust bundle
the app ships with, decide whether this exact binary is an approved release:

1. the trust bundle is current (not expired);
2. the artifact's SHA-256 is the one the logged approval names;
3. the approval entry is in the log: a C2SP tlog-proof whose checkpoint is signed by the log
   and cosigned by a quorum of witnesses, and whose inclusion proof leads to its root;
4. that checkpoint is consistent with the last one this verifier saw (``state``): a smaller
   tree is a rollback, a different root at the same size or a failed consistency proof is a
   split view;
5. the VSA (custodian-signed) names this artifact, app and channel, and exactly the logged
   provenance and review envelopes;
6. the provenance passes the bundle's policy (trusted builder, allowlist, build type, exact
   external parameters, subject digest);
7. the review approves the provenance's commit, signed by enough independent reviewers.

Only if all hold is the state advanced. Imports only pure formats (no database, no server),
so it can be vendored into a client. The protocol is in docs/MOBILE-PROTOCOL.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bastion.errors import BastionError
from bastion.events import MAX_ENTRY_BYTES, ReleaseApproval, decode_event
from bastion.ledger.checkpoint import Checkpoint, CheckpointError
from bastion.ledger.cosignature import CosignatureVerifier, QuorumError
from bastion.ledger.merkle import verify_consistency
from bastion.ledger.note import KeyFormatError, NoteError, NoteVerifier
from bastion.ledger.tlogproof import VerifiedProof, verify_proof
from bastion.releases.bundle import TrustBundle, load_trust_bundle
from bastion.releases.dsse import b64decode_any, parse_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.provenance import check_provenance
from bastion.releases.review import check_review
from bastion.releases.strictjson import JsonRefused, NotCanonical, loads_canonical
from bastion.releases.strictjson import loads as strict_loads
from bastion.releases.vsa import check_vsa

EVIDENCE_FORMAT = "bastion-release-evidence/v1"
MAX_CONSISTENCY_PROOFS = 64
MAX_PROOF_HASHES = 64
# The largest honest evidence: a 64 KiB entry in base64 (~88 KB), a tlog-proof, and 64
# consistency proofs of 64 hashes (~190 KB). Anything past 1 MiB is refused unparsed.
MAX_EVIDENCE_BYTES = 1 << 20
MAX_STATE_BYTES = 64 * 1024


# --- evidence ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "hashes": [base64.b64encode(h).decode() for h in self.hashes],
        }


@dataclass(frozen=True)
class Evidence:
    """What the custodian publishes per release: the log entry, its tlog-proof, and
    consistency proofs from earlier tree sizes clients may have seen."""

    entry: bytes
    tlog_proof: str
    consistency: tuple[ConsistencyProof, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EVIDENCE_FORMAT,
            "entry": base64.b64encode(self.entry).decode(),
            "tlog_proof": self.tlog_proof,
            "consistency": [c.to_json() for c in self.consistency],
        }


def _malformed(message: str) -> ReleaseRejected:
    return ReleaseRejected("evidence.malformed", message)


def parse_evidence(obj: object) -> Evidence:
    if isinstance(obj, Evidence):
        return obj
    if isinstance(obj, str | bytes):
        try:
            obj = strict_loads(obj, max_bytes=MAX_EVIDENCE_BYTES)
        except JsonRefused as exc:
            raise _malformed(f"evidence is refused: {exc}") from None
    if not isinstance(obj, Mapping):
        raise _malformed("evidence must be a JSON object")
    if obj.get("format") != EVIDENCE_FORMAT:
        raise _malformed(f"field 'format' must be {EVIDENCE_FORMAT!r}")
    try:
        entry = b64decode_any(obj.get("entry"), "entry")
    except ReleaseRejected as exc:
        raise _malformed(exc.detail) from None
    if len(entry) > MAX_ENTRY_BYTES:
        raise _malformed(f"the log entry exceeds {MAX_ENTRY_BYTES} bytes")
    proof = obj.get("tlog_proof")
    if not isinstance(proof, str):
        raise _malformed("field 'tlog_proof' must be a string")
    raw = obj.get("consistency", [])
    if not isinstance(raw, list) or len(raw) > MAX_CONSISTENCY_PROOFS:
        raise _malformed(f"field 'consistency' must be a list of ≤{MAX_CONSISTENCY_PROOFS}")
    proofs = []
    for i, item in enumerate(raw):
        where = f"consistency[{i}]"
        if not isinstance(item, Mapping):
            raise _malformed(f"{where} must be an object")
        old, new, hashes = item.get("old_size"), item.get("new_size"), item.get("hashes")
        if not isinstance(old, int) or not isinstance(new, int) or isinstance(old, bool):
            raise _malformed(f"{where}: old_size and new_size must be integers")
        if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
            raise _malformed(f"{where}.hashes must be a list")
        try:
            decoded = tuple(b64decode_any(h, f"{where}.hashes") for h in hashes)
        except ReleaseRejected as exc:
            raise _malformed(exc.detail) from None
        proofs.append(ConsistencyProof(old, new, decoded))
    return Evidence(entry, proof, tuple(proofs))


# --- verifier state (the last checkpoint seen) ---------------------------------------------


@dataclass(frozen=True)
class TrustedHead:
    size: int
    root_hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root_hash": self.root_hash.hex()}


class VerifierState(Protocol):
    """Where a client keeps the newest checkpoint it has verified, per log origin."""

    def load(self, origin: str) -> TrustedHead | None: ...

    def save(self, origin: str, head: TrustedHead, checkpoint_note: str) -> None: ...


class MemoryState:
    def __init__(self) -> None:
        self.heads: dict[str, TrustedHead] = {}

    def load(self, origin: str) -> TrustedHead | None:
        return self.heads.get(origin)

    def save(self, origin: str, head: TrustedHead, checkpoint_note: str) -> None:
        self.heads[origin] = head


class DirectoryState:
    """One JSON file per log origin in a directory; written atomically (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, origin: str) -> Path:
        return self.path / f"{hashlib.sha256(origin.encode()).hexdigest()[:32]}.json"

    def load(self, origin: str) -> TrustedHead | None:
        file = self._file(origin)
        try:
            data = strict_loads(file.read_bytes(), max_bytes=MAX_STATE_BYTES)
            head = TrustedHead(int(data["size"]), bytes.fromhex(data["root_hash"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            # A corrupt state must not silently reset trust to "first use".
            raise ReleaseRejected("state.corrupt", f"verifier state {file} is unreadable") from None
        if data.get("origin") != origin:
            raise ReleaseRejected("state.corrupt", f"verifier state {file} is for another log")
        return head

    def save(self, origin: str, head: TrustedHead, checkpoint_note: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        payload = {"origin": origin, **head.to_json(), "checkpoint": checkpoint_note}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._file(origin))


# --- result --------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerificationResult:
    ok: bool
    artifact_sha256: str
    code: str | None = None
    """Stable failure code (``area.reason``), None when ok."""
    message: str | None = None
    app: str | None = None
    channel: str | None = None
    commit: str | None = None
    repository: str | None = None
    builder: str | None = None
    reviewers: list[str] = field(default_factory=list)
    log_index: int | None = None
    checkpoint: dict[str, Any] | None = None
    policy_digest_matches_bundle: bool | None = None
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "artifact_sha256": self.artifact_sha256,
            "code": self.code,
            "message": self.message,
            "app": self.app,
            "channel": self.channel,
            "repository": self.repository,
            "commit": self.commit,
            "builder": self.builder,
            "reviewers": self.reviewers,
            "log_index": self.log_index,
            "checkpoint": self.checkpoint,
            "policy_digest_matches_bundle": self.policy_digest_matches_bundle,
            "checks": [c.to_json() for c in self.checks],
        }


# --- the check -----------------------------------------------------------------------------


def _log_code(exc: BastionError) -> str:
    if isinstance(exc, QuorumError):
        return "log.cosignatures"
    if isinstance(exc, CheckpointError | NoteError | KeyFormatError):
        return "log.checkpoint"
    return "log.inclusion"


def _check_log(bundle: TrustBundle, evidence: Evidence) -> tuple[VerifiedProof, str]:
    try:
        log_verifier = NoteVerifier.from_vkey(bundle.log.vkey)
        witnesses = [CosignatureVerifier.from_vkey(v) for v in bundle.witnesses.vkeys]
    except BastionError as exc:
        raise ReleaseRejected("bundle.malformed", f"log or witness key: {exc}") from None
    if log_verifier.name != bundle.log.origin:
        raise ReleaseRejected("bundle.malformed", "log vkey name is not the log origin")
    try:
        proof = verify_proof(
            evidence.tlog_proof, evidence.entry, log_verifier, witnesses, bundle.witnesses.quorum
        )
    except BastionError as exc:
        raise ReleaseRejected(_log_code(exc), str(exc)) from None
    note = evidence.tlog_proof.partition("\n\n")[2]
    return proof, note


def _check_consistency(
    previous: TrustedHead | None, checkpoint: Checkpoint, evidence: Evidence
) -> str:
    if previous is None:
        return f"first checkpoint seen (size {checkpoint.size})"
    if checkpoint.size < previous.size:
        raise ReleaseRejected(
            "log.rollback",
            f"checkpoint size {checkpoint.size} is older than the size {previous.size} "
            "already seen; fetch fresh evidence",
        )
    if checkpoint.size == previous.size:
        if checkpoint.root_hash != previous.root_hash:
            raise ReleaseRejected(
                "log.split_view", f"two different roots for tree size {checkpoint.size}"
            )
        return f"same checkpoint as last seen (size {checkpoint.size})"
    proof = next(
        (
            c
            for c in evidence.consistency
            if c.old_size == previous.size and c.new_size == checkpoint.size
        ),
        None,
    )
    if proof is None:
        raise ReleaseRejected(
            "log.consistency_missing",
            f"evidence has no consistency proof from size {previous.size} to {checkpoint.size}",
        )
    try:
        verify_consistency(
            previous.size, checkpoint.size, proof.hashes, previous.root_hash, checkpoint.root_hash
        )
    except BastionError as exc:
        raise ReleaseRejected("log.split_view", f"log is not append-only: {exc}") from None
    return f"consistent with size {previous.size}"


def _decode_entry(entry: bytes) -> ReleaseApproval:
    """The logged approval, accepted only as the exact bytes RFC 8785 gives for what they say.

    The log commits to bytes; a phone and an auditor must read one meaning from them. A key
    given twice (parsers differ on which wins), other whitespace, key order or number and
    string spellings would let the same logged bytes be read two ways, so the entry is parsed
    strictly (no duplicate keys, bounded), re-encoded, and refused unless that is identical.
    """
    try:
        loads_canonical(entry, max_bytes=MAX_ENTRY_BYTES)
    except NotCanonical:
        raise ReleaseRejected(
            "evidence.noncanonical",
            "log entry is not RFC 8785 canonical JSON (re-encoding it gives other bytes)",
        ) from None
    except JsonRefused as exc:
        raise ReleaseRejected("evidence.malformed", f"log entry is refused: {exc}") from None
    try:
        event = decode_event(entry)
    except ValueError:
        raise ReleaseRejected("evidence.malformed", "log entry is not an event") from None
    if not isinstance(event, ReleaseApproval):
        raise ReleaseRejected("evidence.malformed", "log entry is not a release approval")
    return event


def _read_artifact(artifact: bytes | Path) -> str:
    if isinstance(artifact, bytes | bytearray | memoryview):
        return hashlib.sha256(artifact).hexdigest()
    digest = hashlib.sha256()
    try:
        with open(artifact, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ReleaseRejected("artifact.unreadable", f"{artifact}: {exc.strerror}") from None
    return digest.hexdigest()


def verify_release(
    artifact: bytes | Path,
    evidence: Evidence | Mapping[str, Any] | str | bytes,
    trust_bundle: TrustBundle | Mapping[str, Any] | str | bytes,
    state: VerifierState | None = None,
    *,
    app: str,
    channel: str,
    now: datetime | None = None,
) -> VerificationResult:
    """Verify ``artifact`` offline. Never raises for a bad release: returns ``ok=False`` with a
    stable ``code``. ``app`` and ``channel`` are required: the update checker names what it
    is, and an approval for any other app or channel is refused (``release.wrong_target``)."""
    result = VerificationResult(ok=False, artifact_sha256="")
    step = "bundle"

    def passed(detail: str) -> None:
        result.checks.append(Check(step, True, detail))

    try:
        bundle = load_trust_bundle(trust_bundle)
        bundle.check_current(now or datetime.now(UTC))
        passed(f"valid until {bundle.expires_at}")

        step = "artifact"
        for wanted, label in ((app, "app"), (channel, "channel")):
            if not isinstance(wanted, str) or not wanted:
                raise ReleaseRejected(
                    "release.target_missing", f"the update checker must name its {label}"
                )
        result.artifact_sha256 = _read_artifact(artifact)
        ev = parse_evidence(evidence)
        event = _decode_entry(ev.entry)
        if event.artifact_sha256 != result.artifact_sha256:
            raise ReleaseRejected(
                "artifact.digest_mismatch",
                f"artifact sha256 {result.artifact_sha256} is not the approved "
                f"{event.artifact_sha256}",
            )
        result.app, result.channel = event.app, event.channel
        for wanted, got, label in ((app, event.app, "app"), (channel, event.channel, "channel")):
            if wanted != got:
                raise ReleaseRejected(
                    "release.wrong_target", f"approval is for {label} {got!r}, not {wanted!r}"
                )
        passed(f"sha256 {result.artifact_sha256} approved for {event.app}/{event.channel}")

        step = "log.inclusion"
        proof, note = _check_log(bundle, ev)
        cp = proof.checkpoint
        result.log_index = proof.index
        result.checkpoint = {
            "origin": cp.origin,
            "size": cp.size,
            "root_hash": cp.root_hash.hex(),
            "cosigners": [c.name for c in proof.cosigners],
        }
        passed(
            f"entry {proof.index} in tree of size {cp.size}, "
            f"{len(proof.cosigners)} witness cosignature(s), quorum {bundle.witnesses.quorum}"
        )

        step = "log.consistency"
        previous = state.load(cp.origin) if state is not None else None
        passed(_check_consistency(previous, cp, ev) if state is not None else "no state kept")

        step = "attestations"
        if event.envelope is None or not event.attestations:
            raise ReleaseRejected("evidence.malformed", "approval carries no envelopes")
        vsa_env = parse_envelope(event.envelope)
        if vsa_env.sha256() != event.vsa_envelope_sha256:
            raise ReleaseRejected("vsa.digest", "VSA envelope does not match its logged digest")
        if set(event.attestations) != {"provenance", "review"}:
            raise ReleaseRejected(
                "evidence.malformed", "approval must carry exactly a provenance and a review"
            )
        inputs = {k: parse_envelope(v) for k, v in event.attestations.items()}
        passed("VSA, provenance and review envelopes well formed")

        step = "vsa"
        vsa = check_vsa(
            vsa_env,
            custodian_keys=bundle.custodian.trusted_keys(),
            threshold=bundle.custodian.threshold,
            verifier_id=bundle.custodian.verifier_id,
            artifact_sha256=result.artifact_sha256,
            app=event.app,
            channel=event.channel,
            inputs=inputs,
        )
        result.policy_digest_matches_bundle = (
            vsa.summary.policy.digest.get("sha256") == bundle.policy.digest()
        )
        passed(
            f"signed by {list(vsa.signers)}; {vsa.summary.resourceUri}; "
            f"levels {vsa.summary.verifiedLevels}"
        )

        step = "provenance"
        prov = check_provenance(inputs["provenance"], result.artifact_sha256, bundle.policy)
        result.builder, result.commit = prov.builder_id, prov.commit
        result.repository = prov.repository.name
        passed(f"built by {prov.builder_id} from {prov.repository.name}@{prov.commit}")

        step = "review"
        review = check_review(
            inputs["review"], bundle.policy, repository=prov.repository.name, commit=prov.commit
        )
        result.reviewers = list(review.signers)
        passed(
            f"{len(review.signers)} independent reviewer(s) approved "
            f"{(review.predicate.range.base or 'root')[:12]}..{prov.commit[:12]}"
        )

        if state is not None:
            state.save(cp.origin, TrustedHead(cp.size, cp.root_hash), note)
        result.ok = True
    except ReleaseRejected as exc:
        result.checks.append(Check(step, False, exc.detail))
        result.code, result.message = exc.code, exc.detail
    except BastionError as exc:  # any other integrity/input failure still fails closed
        result.checks.append(Check(step, False, str(exc)))
        result.code, result.message = f"{step}.error", str(exc)
    except Exception as exc:  # the promise: a bad release never raises
        # The inputs are parsed bounded and strictly, so this is not expected; if some part
        # still fails on hostile input (RecursionError, MemoryError, ...) it fails closed.
        detail = f"verification stopped: {type(exc).__name__}"
        result.checks.append(Check(step, False, detail))
        result.code, result.message = f"{step}.error", detail
    return result
