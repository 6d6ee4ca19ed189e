"""Signed, time-boxed grants bound to the hash of the access request they answer.

A grant token is ``bgrant1.<payload>.<signature>``: the payload is the RFC 8785 canonical JSON
of ``GrantClaims`` (base64url), signed with the custodian's Ed25519 grant key over a
domain-separated message. Verifying the signature and the claims is pure (this module);
checking revocation, replay and the stored request lives in ``approvals``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import BastionError
from bastion.events import canonical

GRANT_KEY_NAME = "grants"
TOKEN_PREFIX = "bgrant1"
_SIGNING_CONTEXT = b"bastion grant v1\n"
MAX_TOKEN_BYTES = 64 * 1024

GrantRejection = Literal[
    "malformed",
    "unknown-key",
    "bad-signature",
    "unknown-grant",
    "request-mismatch",
    "not-yet-valid",
    "expired",
    "revoked",
    "wrong-principal",
    "out-of-scope",
    "replayed",
    "exhausted",
]


class GrantRejected(BastionError):
    """A grant was refused. The message names why, never the data it would have opened."""

    exit_code = 2

    def __init__(self, kind: GrantRejection, detail: str) -> None:
        super().__init__(f"grant refused ({kind}): {detail}")
        self.kind: GrantRejection = kind
        self.detail = detail


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def request_sha256(canonical_request: dict[str, Any]) -> str:
    """SHA-256 of the request's RFC 8785 canonical JSON: what approvers saw and a grant binds."""
    return hashlib.sha256(canonical(canonical_request)).hexdigest()


def optional_claims(all_subjects: bool, max_uses: int | None) -> dict[str, Any]:
    """``all_subjects`` and ``max_uses`` as a request's canonical form and a grant's claims
    carry them: only when set, so requests and tokens made before they existed keep their
    hash and their form."""
    extra: dict[str, Any] = {}
    if all_subjects:
        extra["all_subjects"] = True
    if max_uses is not None:
        extra["max_uses"] = max_uses
    return extra


@dataclass(frozen=True)
class GrantClaims:
    grant_id: str
    kind: Literal["approval", "break-glass"]
    request_id: str
    request_sha256: str
    principal: str
    dataset: str
    action: str
    fields: tuple[str, ...]
    subjects: tuple[str, ...]
    approvers: tuple[str, ...]
    justification: str
    issued_at: datetime
    expires_at: datetime
    key_id: str
    # Set only on grants for every subject / with a number of uses (older tokens lack them).
    all_subjects: bool = False
    max_uses: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **optional_claims(self.all_subjects, self.max_uses),
            "v": 1,
            "grant_id": self.grant_id,
            "kind": self.kind,
            "request_id": self.request_id,
            "request_sha256": self.request_sha256,
            "principal": self.principal,
            "dataset": self.dataset,
            "action": self.action,
            "fields": sorted(self.fields),
            "subjects": sorted(self.subjects),
            "approvers": sorted(self.approvers),
            "justification": self.justification,
            "iat": int(self.issued_at.timestamp()),
            "exp": int(self.expires_at.timestamp()),
            "kid": self.key_id,
        }

    @staticmethod
    def from_json(obj: Any) -> GrantClaims:
        if not isinstance(obj, dict) or obj.get("v") != 1:
            raise GrantRejected("malformed", "unknown grant format")
        try:

            def strings(name: str) -> tuple[str, ...]:
                value = obj[name]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise TypeError(name)
                return tuple(value)

            kind = obj["kind"]
            if kind not in ("approval", "break-glass"):
                raise TypeError("kind")
            text = {
                k: obj[k]
                for k in (
                    "grant_id",
                    "request_id",
                    "request_sha256",
                    "principal",
                    "dataset",
                    "action",
                    "justification",
                    "kid",
                )
            }
            if not all(isinstance(v, str) for v in text.values()):
                raise TypeError("string claims")
            iat, exp = obj["iat"], obj["exp"]
            if not isinstance(iat, int) or not isinstance(exp, int):
                raise TypeError("iat/exp")
            all_subjects = obj.get("all_subjects", False)
            max_uses = obj.get("max_uses")
            if not isinstance(all_subjects, bool) or not (
                max_uses is None or (isinstance(max_uses, int) and not isinstance(max_uses, bool))
            ):
                raise TypeError("all_subjects/max_uses")
            return GrantClaims(
                grant_id=text["grant_id"],
                kind=kind,
                request_id=text["request_id"],
                request_sha256=text["request_sha256"],
                principal=text["principal"],
                dataset=text["dataset"],
                action=text["action"],
                fields=strings("fields"),
                subjects=strings("subjects"),
                approvers=strings("approvers"),
                justification=text["justification"],
                issued_at=datetime.fromtimestamp(iat, UTC),
                expires_at=datetime.fromtimestamp(exp, UTC),
                key_id=text["kid"],
                all_subjects=all_subjects,
                max_uses=max_uses,
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            raise GrantRejected("malformed", "grant claims are incomplete or mistyped") from None

    def covers(self, dataset: str, action: str, fields: Iterable[str]) -> bool:
        return dataset == self.dataset and action == self.action and set(fields) <= set(self.fields)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_grant(claims: GrantClaims, key: Ed25519PrivateKey) -> str:
    payload = canonical(claims.to_json())
    signature = key.sign(_SIGNING_CONTEXT + payload)
    return f"{TOKEN_PREFIX}.{_b64(payload)}.{_b64(signature)}"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def verify_grant_token(token: str, public_key: Ed25519PublicKey) -> GrantClaims:
    """Check the token's form and signature and return its claims (not yet its validity)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise GrantRejected("malformed", "grant token is missing or too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise GrantRejected("malformed", f"a grant token looks like {TOKEN_PREFIX}.<claims>.<sig>")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise GrantRejected("malformed", "grant token is not base64url") from None
    try:
        public_key.verify(signature, _SIGNING_CONTEXT + payload)
    except InvalidSignature:
        raise GrantRejected("bad-signature", "grant signature does not verify") from None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise GrantRejected("malformed", "grant claims are not JSON") from None
    claims = GrantClaims.from_json(obj)
    if claims.key_id != key_id(public_key):
        raise GrantRejected("unknown-key", "grant was signed by another key")
    return claims
