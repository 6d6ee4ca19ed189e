"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse), written against the spec.

Hand-written on purpose: securesystemslib's PAE counts characters, the spec counts *bytes*
(``LEN(s)`` is the byte length of the UTF-8 encoding). Signatures are Ed25519 via
``cryptography``. Pure functions, no I/O.

Verification rules (the spec's, made strict):
- a signature counts only if it verifies under a key the *caller* trusts; the envelope's
  ``keyid`` is a hint we never rely on, so every trusted key is tried against every signature;
- a threshold counts distinct trusted *public keys*: the same key signing twice, or listed
  twice in the trust set under two names, counts once;
- both base64 alphabets (standard and URL-safe), with or without padding, are accepted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.events import canonical
from bastion.releases.errors import ReleaseRejected
from bastion.releases.strictjson import JsonRefused
from bastion.releases.strictjson import loads as strict_loads

# Bounds keep a hostile envelope from costing unbounded work: verification tries every
# trusted key against every signature.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_SIGNATURES = 32
MAX_PAYLOAD_TYPE_BYTES = 256
MAX_ENVELOPE_BYTES = 1 << 20  # the payload in base64 plus the signatures, with room to spare

_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]*$")


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def b64decode_any(text: object, field: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not. Anything else is malformed."""
    if not isinstance(text, str):
        raise ReleaseRejected("envelope.malformed", f"field {field!r} must be a base64 string")
    core = text.rstrip("=")
    padding = len(text) - len(core)
    if not _B64_CHARS.match(core) or padding > 2:
        raise ReleaseRejected("envelope.malformed", f"field {field!r} is not base64")
    if any(c in core for c in "+/") and any(c in core for c in "-_"):
        raise ReleaseRejected(
            "envelope.malformed", f"field {field!r} mixes the standard and URL-safe alphabets"
        )
    if len(core) % 4 == 1 or (padding and (len(core) + padding) % 4 != 0):
        raise ReleaseRejected("envelope.malformed", f"field {field!r} has a bad base64 length")
    standard = core.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except ValueError:
        raise ReleaseRejected("envelope.malformed", f"field {field!r} is not base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A hint naming the key: hex SHA-256 of its raw 32 bytes. Informational only."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()


def public_key_from_b64(text: str, field: str = "public_key") -> Ed25519PublicKey:
    raw = b64decode_any(text, field)
    if len(raw) != 32:
        raise ReleaseRejected("key.malformed", f"field {field!r} is not a 32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_to_b64(key: Ed25519PublicKey) -> str:
    return b64encode(public_key_bytes(key))


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": b64encode(self.payload),
            "signatures": [{"keyid": s.keyid, "sig": b64encode(s.sig)} for s in self.signatures],
        }

    def canonical_bytes(self) -> bytes:
        """RFC 8785 JSON of the envelope: what digests over an envelope are computed on."""
        return canonical(self.to_json())

    @functools.cached_property
    def _sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def sha256(self) -> str:
        """Hex SHA-256 of ``canonical_bytes()`` (computed once: the envelope is immutable)."""
        return self._sha256


def parse_envelope(obj: object) -> Envelope:
    """Validate an envelope's shape. Raises ``envelope.malformed`` naming the bad field."""
    if isinstance(obj, str | bytes):
        try:
            obj = strict_loads(obj, max_bytes=MAX_ENVELOPE_BYTES)
        except JsonRefused as exc:
            raise ReleaseRejected("envelope.malformed", f"envelope is refused: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ReleaseRejected("envelope.malformed", "envelope must be a JSON object")
    unknown = set(obj) - {"payloadType", "payload", "signatures"}
    if unknown:
        raise ReleaseRejected("envelope.malformed", f"unknown envelope fields {sorted(unknown)}")
    payload_type = obj.get("payloadType")
    if not isinstance(payload_type, str) or not payload_type:
        raise ReleaseRejected("envelope.malformed", "field 'payloadType' must be a string")
    if len(payload_type.encode("utf-8")) > MAX_PAYLOAD_TYPE_BYTES:
        raise ReleaseRejected("envelope.malformed", "field 'payloadType' is too long")
    payload = b64decode_any(obj.get("payload"), "payload")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ReleaseRejected("envelope.malformed", f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    raw_sigs = obj.get("signatures")
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise ReleaseRejected("envelope.malformed", "field 'signatures' must be a non-empty list")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise ReleaseRejected("envelope.malformed", f"more than {MAX_SIGNATURES} signatures")
    sigs: list[Signature] = []
    for i, raw in enumerate(raw_sigs):
        if not isinstance(raw, Mapping) or set(raw) - {"keyid", "sig"}:
            raise ReleaseRejected("envelope.malformed", f"signatures[{i}] must be {{keyid, sig}}")
        keyid = raw.get("keyid", "")
        if not isinstance(keyid, str):
            raise ReleaseRejected("envelope.malformed", f"signatures[{i}].keyid must be a string")
        sigs.append(Signature(keyid, b64decode_any(raw.get("sig"), f"signatures[{i}].sig")))
    return Envelope(payload_type, payload, tuple(sigs))


def sign_envelope(payload_type: str, payload: bytes, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign ``payload`` once per key, in order."""
    if not keys:
        raise ValueError("at least one signing key is required")
    message = pae(payload_type, payload)
    sigs = tuple(Signature(key_id(k.public_key()), k.sign(message)) for k in keys)
    return Envelope(payload_type, payload, sigs)


def add_signature(envelope: Envelope, key: Ed25519PrivateKey) -> Envelope:
    """Countersign an existing envelope (e.g. a second reviewer)."""
    sig = Signature(
        key_id(key.public_key()), key.sign(pae(envelope.payload_type, envelope.payload))
    )
    return Envelope(envelope.payload_type, envelope.payload, (*envelope.signatures, sig))


@dataclass(frozen=True)
class TrustedKey:
    """A key the verifier trusts, under a name the *verifier* chose (never the envelope)."""

    name: str
    key: Ed25519PublicKey


@dataclass(frozen=True)
class VerifiedEnvelope:
    payload_type: str
    payload: bytes
    signers: tuple[str, ...]
    """Names of the distinct trusted keys whose signature verified, in trust-list order."""


def verify_envelope(
    envelope: Envelope,
    *,
    payload_type: str,
    trusted: Sequence[TrustedKey],
    threshold: int,
    what: str = "envelope",
) -> VerifiedEnvelope:
    """Check the payload type and that at least ``threshold`` distinct trusted keys signed."""
    if threshold < 1:
        raise ValueError("a DSSE threshold must be at least 1")
    if envelope.payload_type != payload_type:
        raise ReleaseRejected(
            "envelope.payload_type",
            f"{what}: payloadType is {envelope.payload_type!r}, expected {payload_type!r}",
        )
    message = pae(envelope.payload_type, envelope.payload)
    seen: set[bytes] = set()
    signers: list[str] = []
    for trusted_key in trusted:
        raw = public_key_bytes(trusted_key.key)
        if raw in seen:
            continue  # the same public key under a second name is still one key
        seen.add(raw)
        for sig in envelope.signatures:
            try:
                trusted_key.key.verify(sig.sig, message)
            except InvalidSignature:
                continue
            signers.append(trusted_key.name)
            break
    if len(signers) < threshold:
        raise ReleaseRejected(
            "envelope.threshold",
            f"{what}: {len(signers)} distinct trusted key(s) signed, {threshold} required",
        )
    return VerifiedEnvelope(envelope.payload_type, envelope.payload, tuple(signers))
