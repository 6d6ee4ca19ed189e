"""The recipient's trust bundle (``bastion-egress-trust/v1``): everything the offline verifier
trusts, nothing else.

    {"format": "bastion-egress-trust/v1",
     "log": {"origin": ..., "verifier_key": <C2SP signed-note vkey>},
     "witnesses": [{"name": ..., "key": <C2SP cosignature/v1 vkey>}], "quorum": N,
     "custodian_keys": [{"name": ..., "public_key": <base64 raw Ed25519>}],
     "flows": {<flow>: {"fields": [<output field>, ...]}}}

The custodian writes it (``bastion egress trust-bundle``) from the log's own anchors
(``ledger.anchors.log_anchors``, as the release bundle does) and hands it to the recipient
out of band; the recipient's verifier refuses a column no flow here declares. Parsing is
strict (unknown fields refused: it is a trust decision) and errors name the field. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.egress.errors import EgressInputError
from bastion.egress.manifest import RESERVED_COLUMNS, is_flow_name
from bastion.errors import BastionError
from bastion.ledger.anchors import LogAnchors
from bastion.ledger.cosignature import CosignatureVerifier
from bastion.ledger.note import NoteVerifier
from bastion.releases.dsse import TrustedKey, public_key_from_b64, public_key_to_b64
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import describe_validation_error
from bastion.releases.strictjson import JsonRefused
from bastion.releases.strictjson import loads as strict_loads

TRUST_FORMAT = "bastion-egress-trust/v1"
MAX_TRUST_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LogKey(_Strict):
    origin: str = Field(min_length=1)
    verifier_key: str = Field(min_length=1)

    @model_validator(mode="after")
    def _key(self) -> LogKey:
        try:
            verifier = NoteVerifier.from_vkey(self.verifier_key)
        except BastionError as exc:
            raise ValueError(f"verifier_key is not a signed-note vkey: {exc}") from None
        if verifier.name != self.origin:
            raise ValueError("verifier_key names another log than origin")
        return self


class WitnessKey(_Strict):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)

    @model_validator(mode="after")
    def _key(self) -> WitnessKey:
        try:
            verifier = CosignatureVerifier.from_vkey(self.key)
        except BastionError as exc:
            raise ValueError(f"key is not a cosignature vkey: {exc}") from None
        if verifier.name != self.name:
            raise ValueError("key names another witness than name")
        return self


class CustodianKey(_Strict):
    name: str = Field(min_length=1)
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            public_key_from_b64(value)
        except ReleaseRejected as exc:
            raise ValueError(exc.detail) from None
        return value

    def trusted_key(self) -> TrustedKey:
        return TrustedKey(self.name, public_key_from_b64(self.public_key))


class FlowTrust(_Strict):
    fields: list[str] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("fields must be unique")
        if any(not f or f in RESERVED_COLUMNS or f.startswith("_") for f in value):
            raise ValueError("a field is non-empty and does not start with '_'")
        return value


class EgressTrust(_Strict):
    format: Literal["bastion-egress-trust/v1"]
    log: LogKey
    witnesses: list[WitnessKey] = Field(default_factory=list)
    quorum: int = Field(ge=0)
    custodian_keys: list[CustodianKey] = Field(min_length=1)
    flows: dict[str, FlowTrust] = Field(min_length=1)

    @field_validator("flows")
    @classmethod
    def _flow_names(cls, value: dict[str, FlowTrust]) -> dict[str, FlowTrust]:
        bad = [name for name in value if not is_flow_name(name)]
        if bad:
            raise ValueError(f"flow name {bad[0]!r} is not a valid flow name")
        return value

    @model_validator(mode="after")
    def _witnesses(self) -> EgressTrust:
        if self.quorum > len(self.witnesses):
            raise ValueError("quorum exceeds the number of witnesses")
        keys = [w.key for w in self.witnesses]
        if len(set(keys)) != len(keys) or len({w.name for w in self.witnesses}) != len(keys):
            raise ValueError("witnesses must be distinct (names and keys)")
        return self

    def log_verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.log.verifier_key)

    def witness_verifiers(self) -> list[CosignatureVerifier]:
        return [CosignatureVerifier.from_vkey(w.key) for w in self.witnesses]

    def trusted_keys(self) -> list[TrustedKey]:
        return [k.trusted_key() for k in self.custodian_keys]

    def flow_fields(self, flow: str) -> frozenset[str] | None:
        """The fields the bundle declares for ``flow``; None for a flow it does not know."""
        trust = self.flows.get(flow)
        return None if trust is None else frozenset(trust.fields)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def build_trust_bundle(
    anchors: LogAnchors,
    custodian_keys: Sequence[tuple[str, Ed25519PublicKey]],
    flows: Mapping[str, Sequence[str]],
) -> EgressTrust:
    """The bundle for a recipient: the log's anchors, the manifest signing keys, and the
    fields of each flow it receives."""
    return parse_trust_bundle(
        {
            "format": TRUST_FORMAT,
            "log": {"origin": anchors.origin, "verifier_key": anchors.vkey},
            "witnesses": [{"name": w.name, "key": w.vkey} for w in anchors.witnesses],
            "quorum": anchors.quorum,
            "custodian_keys": [
                {"name": name, "public_key": public_key_to_b64(key)} for name, key in custodian_keys
            ],
            "flows": {name: {"fields": list(fields)} for name, fields in flows.items()},
        }
    )


def parse_trust_bundle(obj: object, *, file: str | None = None) -> EgressTrust:
    """A bundle from JSON text or a decoded object; ``egress.trust.malformed`` names the field."""
    if isinstance(obj, EgressTrust):
        return obj
    if isinstance(obj, str | bytes):
        try:
            obj = strict_loads(obj, max_bytes=MAX_TRUST_BYTES)
        except JsonRefused as exc:
            raise EgressInputError(
                "egress.trust.malformed", f"trust bundle is refused: {exc}", file=file
            ) from None
    if not isinstance(obj, Mapping):
        raise EgressInputError(
            "egress.trust.malformed", "a trust bundle is a JSON object", file=file
        )
    if obj.get("format") != TRUST_FORMAT:
        raise EgressInputError(
            "egress.trust.malformed", f"must be {TRUST_FORMAT!r}", file=file, field="format"
        )
    try:
        return EgressTrust.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise EgressInputError(
            "egress.trust.malformed",
            describe_validation_error(exc).partition(": ")[2] or str(first["msg"]),
            file=file,
            field=where,
        ) from None
