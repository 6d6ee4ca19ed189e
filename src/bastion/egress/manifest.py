"""A run's manifest: an in-toto Statement v1 in a DSSE envelope, signed by the custodian.

One subject per payload chunk (``chunk-00000.parquet``, ...) with the SHA-256 of the chunk's
*plaintext* Parquet bytes; the predicate (``https://bastion.dev/egress-manifest/v1``) says
which flow, run, cursor range, counts and schema the chunks carry. The envelope is appended to
the ledger before any chunk leaves, and ``manifest_digest`` (SHA-256 of the signed payload) is
bound into every chunk's HPKE context, so a chunk belongs to exactly one manifest.

Pure functions, no I/O. Parsing follows in-toto: unknown predicate fields are ignored (a newer
custodian may add some), the known ones are validated and every error names its field.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.egress.errors import EgressRejected
from bastion.events import Actor, EgressManifest, canonical
from bastion.releases.dsse import (
    Envelope,
    TrustedKey,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    Statement,
    describe_validation_error,
    parse_statement,
)

PREDICATE_TYPE = "https://bastion.dev/egress-manifest/v1"
SIGNING_KEY_NAME = "egress-manifest"
"""The custodian's keyring name for the manifest signing key (``keys.signing``)."""

# The ledger entry (64 KiB at most) embeds the envelope, whose base64 payload lists one
# subject per chunk (~130 bytes each once encoded): 256 chunks leave room for the schema and
# the rest. At the default 500,000 rows a chunk that is 128 million rows per run.
MAX_CHUNKS = 256
MAX_COLUMNS = 512

ROW_COLUMN = "_row"
OP_COLUMN = "_op"
RESERVED_COLUMNS = (ROW_COLUMN, OP_COLUMN)

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
FLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def chunk_subject_name(index: int) -> str:
    """The subject naming chunk ``index`` (its plaintext; the ciphertext file is ``.hpke``)."""
    return f"chunk-{index:05d}.parquet"


def new_manifest_id() -> str:
    """32 random hex characters: unguessable, and a safe directory name."""
    return secrets.token_hex(16)


def is_flow_name(name: str) -> bool:
    """A flow name that is also a safe path segment (no ``/``, no ``..``, no leading dot)."""
    return bool(FLOW_NAME.match(name)) and ".." not in name


class _Model(BaseModel):
    # Consumers MUST ignore unknown predicate fields (in-toto): a newer writer may add some.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Column(_Model):
    name: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=128)
    """The Arrow type as ``str(pyarrow type)``: ``string``, ``int64``, ``date32[day]``..."""


class Cursor(_Model):
    after: int = Field(ge=0)
    through: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Cursor:
        if self.through < self.after:
            raise ValueError("cursor.through must not be before cursor.after")
        return self


class ManifestPredicate(_Model):
    manifest_id: str
    flow: str
    flow_version: int = Field(ge=1)
    flow_sha256: str
    recipient: str = Field(min_length=1, max_length=256)
    kind: Literal["records", "aggregate"]
    policy_sha256: str
    run: int = Field(ge=1)
    previous_manifest: str | None
    cursor: Cursor
    mode: Literal["incremental", "full"]
    rows: int = Field(ge=0, description="upserts delivered (tombstones not included)")
    tombstones: int = Field(ge=0, description="rows with _op = delete")
    schema_: list[Column] = Field(alias="schema", min_length=2, max_length=MAX_COLUMNS)
    chunks: int = Field(ge=1, le=MAX_CHUNKS)
    created_at: str

    @field_validator("manifest_id")
    @classmethod
    def _manifest_id(cls, value: str) -> str:
        if not _HEX32.match(value):
            raise ValueError("must be 32 lowercase hex characters")
        return value

    @field_validator("previous_manifest")
    @classmethod
    def _previous(cls, value: str | None) -> str | None:
        if value is not None and not _HEX32.match(value):
            raise ValueError("must be null or 32 lowercase hex characters")
        return value

    @field_validator("flow")
    @classmethod
    def _flow(cls, value: str) -> str:
        if not is_flow_name(value):
            raise ValueError("must be letters, digits, '_', '.', '-' (no '..'), at most 128")
        return value

    @field_validator("flow_sha256", "policy_sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not _HEX64.match(value):
            raise ValueError("must be 64 lowercase hex characters")
        return value

    @field_validator("created_at")
    @classmethod
    def _created(cls, value: str) -> str:
        if not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 time with a zone")
        return value

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: list[Column]) -> list[Column]:
        names = [c.name for c in value]
        if tuple(names[:2]) != RESERVED_COLUMNS:
            raise ValueError("must start with the columns _row, _op")
        if any(c.type != "string" for c in value[:2]):
            raise ValueError("_row and _op must be of type string")
        if len(set(names)) != len(names):
            raise ValueError("column names must be unique")
        if any(n.startswith("_") for n in names[2:]):
            raise ValueError("only _row and _op may start with '_'")
        return value

    @model_validator(mode="after")
    def _chain(self) -> ManifestPredicate:
        if self.previous_manifest == self.manifest_id:
            raise ValueError("previous_manifest must not be the manifest itself")
        if self.run == 1 and self.previous_manifest is not None:
            raise ValueError("run 1 has no previous_manifest")
        return self

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(self.schema_)

    @property
    def fields(self) -> tuple[str, ...]:
        """The flow's output fields: every column but _row and _op."""
        return tuple(c.name for c in self.schema_[2:])

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: the signed envelope, its statement and predicate."""

    envelope: Envelope
    statement: Statement
    predicate: ManifestPredicate
    chunk_sha256: tuple[str, ...]
    """Hex SHA-256 of each chunk's plaintext, in chunk order."""
    signers: tuple[str, ...]

    @property
    def digest(self) -> bytes:
        return manifest_digest(self.envelope)

    @property
    def manifest_id(self) -> str:
        return self.predicate.manifest_id


def _malformed(message: str) -> EgressRejected:
    return EgressRejected("egress.manifest.malformed", message)


def _predicate(data: Mapping[str, Any]) -> ManifestPredicate:
    try:
        return ManifestPredicate.model_validate(data)
    except ValidationError as exc:
        raise _malformed(f"predicate {describe_validation_error(exc)}") from None


def _chunk_digests(statement: Statement, chunks: int) -> tuple[str, ...]:
    if len(statement.subject) != chunks:
        raise _malformed(f"the statement has {len(statement.subject)} subjects for {chunks} chunks")
    digests = []
    for i, subject in enumerate(statement.subject):
        if subject.name != chunk_subject_name(i):
            raise _malformed(f"field 'subject[{i}].name' must be {chunk_subject_name(i)!r}")
        sha = (subject.digest or {}).get("sha256")
        if sha is None or not _HEX64.match(sha):
            raise _malformed(f"field 'subject[{i}].digest.sha256' must be 64 lowercase hex")
        digests.append(sha)
    return tuple(digests)


def build_statement(
    *,
    manifest_id: str,
    flow: str,
    flow_version: int,
    flow_sha256: str,
    recipient: str,
    kind: Literal["records", "aggregate"],
    policy_sha256: str,
    run: int,
    previous_manifest: str | None,
    cursor_after: int,
    cursor_through: int,
    mode: Literal["incremental", "full"],
    rows: int,
    tombstones: int,
    schema: Sequence[Column] | Sequence[tuple[str, str]],
    chunk_sha256: Sequence[str],
    created_at: str,
) -> dict[str, Any]:
    """The Statement (as JSON) for one run. ``chunk_sha256`` is the hex SHA-256 of each
    chunk's plaintext Parquet bytes, in order. Raises ``egress.manifest.malformed`` naming the
    field for a value the recipient would refuse, so a bad manifest is never signed."""
    columns = [c if isinstance(c, Column) else Column(name=c[0], type=c[1]) for c in schema]
    predicate = _predicate(
        {
            "manifest_id": manifest_id,
            "flow": flow,
            "flow_version": flow_version,
            "flow_sha256": flow_sha256,
            "recipient": recipient,
            "kind": kind,
            "policy_sha256": policy_sha256,
            "run": run,
            "previous_manifest": previous_manifest,
            "cursor": {"after": cursor_after, "through": cursor_through},
            "mode": mode,
            "rows": rows,
            "tombstones": tombstones,
            "schema": [c.model_dump() for c in columns],
            "chunks": len(chunk_sha256),
            "created_at": created_at,
        }
    )
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": chunk_subject_name(i), "digest": {"sha256": sha}}
            for i, sha in enumerate(chunk_sha256)
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate.to_json(),
    }
    try:
        _chunk_digests(Statement.model_validate(statement), predicate.chunks)
    except ValidationError as exc:
        raise _malformed(describe_validation_error(exc)) from None
    return statement


def statement_payload(statement: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: the statement's RFC 8785 canonical JSON."""
    return canonical(dict(statement))


def sign_manifest(statement: Mapping[str, Any], key: Ed25519PrivateKey) -> Envelope:
    """The DSSE envelope (in-toto payload type) of ``statement``, signed with ``key``."""
    return sign_envelope(PAYLOAD_TYPE, statement_payload(statement), [key])


def manifest_digest(envelope: Envelope) -> bytes:
    """SHA-256 of the envelope's payload (what was signed): the 32 bytes every chunk's HPKE
    context binds. Signatures are outside it, so a countersignature moves no chunk."""
    return hashlib.sha256(envelope.payload).digest()


def envelope_bytes(envelope: Envelope) -> bytes:
    """The delivered ``manifest.dsse.json``: the envelope's canonical JSON."""
    return envelope.canonical_bytes()


def _envelope(obj: Envelope | Mapping[str, Any] | str | bytes) -> Envelope:
    if isinstance(obj, Envelope):
        return obj
    try:
        return parse_envelope(obj)
    except ReleaseRejected as exc:
        raise _malformed(f"manifest envelope: {exc.detail}") from None


def parse_manifest(
    envelope: Envelope | Mapping[str, Any] | str | bytes,
    trusted: Sequence[TrustedKey],
    *,
    threshold: int = 1,
) -> Manifest:
    """Verify the envelope's signature against ``trusted`` custodian keys (``egress.signature``
    when not enough of them signed), then parse and validate the statement and predicate
    (``egress.manifest.malformed`` naming the field)."""
    env = _envelope(envelope)
    try:
        verified = verify_envelope(
            env, payload_type=PAYLOAD_TYPE, trusted=trusted, threshold=threshold, what="manifest"
        )
    except ReleaseRejected as exc:
        raise EgressRejected("egress.signature", exc.detail) from None
    return _parse_payload(env, verified.signers)


def peek_manifest(envelope: Envelope | Mapping[str, Any] | str | bytes) -> Manifest:
    """The manifest WITHOUT checking any signature (``signers`` is empty): only to route a
    delivery (its flow and manifest id) or for the signer's own use. Never trust it."""
    return _parse_payload(_envelope(envelope), ())


def _parse_payload(env: Envelope, signers: tuple[str, ...]) -> Manifest:
    try:
        statement = parse_statement(env.payload, PREDICATE_TYPE, "manifest")
    except ReleaseRejected as exc:
        raise _malformed(exc.detail) from None
    predicate = _predicate(statement.predicate)
    return Manifest(env, statement, predicate, _chunk_digests(statement, predicate.chunks), signers)


def manifest_event(envelope: Envelope, *, actor: Actor, reason: str, at: str) -> EgressManifest:
    """The ledger event to append BEFORE delivering: the envelope exactly as delivered, and
    the figures the recipient checks against the signed predicate (taken from it here, so the
    two cannot disagree)."""
    p = peek_manifest(envelope).predicate
    return EgressManifest(
        actor=actor,
        reason=reason,
        at=at,
        flow=p.flow,
        flow_version=p.flow_version,
        manifest_id=p.manifest_id,
        recipient=p.recipient,
        run=p.run,
        rows=p.rows,
        tombstones=p.tombstones,
        chunks=p.chunks,
        cursor_after=p.cursor.after,
        cursor_through=p.cursor.through,
        envelope=envelope.to_json(),
    )
