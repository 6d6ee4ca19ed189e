"""The trust bundle an app ships with: everything an offline verifier needs, nothing else.

It names the custodian's VSA keys (and how many must sign), the log's C2SP vkey, the
witnesses' vkeys and the cosignature quorum, an expiry, and the release policy itself
(repositories with their required reviewers, reviewer keys, allowed builders and build
types). A bundle past ``expires_at`` is refused, so a stolen-and-revoked key cannot be trusted
forever by an app that stopped updating. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from bastion.releases.dsse import TrustedKey
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import describe_validation_error
from bastion.releases.policy import KeyHolder, ReleasePolicy, StrictModel
from bastion.releases.strictjson import JsonRefused
from bastion.releases.strictjson import loads as strict_loads

BUNDLE_FORMAT = "bastion-trust-bundle/v1"
MAX_BUNDLE_BYTES = 1 << 20


def parse_time(text: str, field: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReleaseRejected("time.malformed", f"field {field!r} is not RFC 3339") from None
    if when.tzinfo is None:
        raise ReleaseRejected("time.malformed", f"field {field!r} has no time zone")
    return when.astimezone(UTC)


class CustodianTrust(StrictModel):
    verifier_id: str = Field(min_length=1)
    """The VSA ``verifier.id`` the custodian signs as."""
    keys: list[KeyHolder] = Field(min_length=1)
    threshold: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _reachable(self) -> CustodianTrust:
        if self.threshold > len(self.keys):
            raise ValueError("custodian threshold exceeds the number of keys")
        return self

    def trusted_keys(self) -> list[TrustedKey]:
        return [k.trusted_key() for k in self.keys]


class LogTrust(StrictModel):
    origin: str = Field(min_length=1)
    vkey: str = Field(min_length=1)
    """The log's C2SP signed-note verifier key (``name+hash+base64``)."""


class WitnessTrust(StrictModel):
    vkeys: list[str] = Field(default_factory=list)
    quorum: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _reachable(self) -> WitnessTrust:
        if self.quorum > len(self.vkeys):
            raise ValueError("witness quorum exceeds the number of witnesses")
        if len(set(self.vkeys)) != len(self.vkeys):
            raise ValueError("witness vkeys must be unique")
        return self


class TrustBundle(StrictModel):
    format: Literal["bastion-trust-bundle/v1"] = "bastion-trust-bundle/v1"
    issued_at: str
    expires_at: str
    custodian: CustodianTrust
    log: LogTrust
    witnesses: WitnessTrust = WitnessTrust()
    policy: ReleasePolicy

    @model_validator(mode="after")
    def _times(self) -> TrustBundle:
        if parse_time(self.expires_at, "expires_at") <= parse_time(self.issued_at, "issued_at"):
            raise ValueError("expires_at must be after issued_at")
        return self

    def check_current(self, now: datetime) -> None:
        if now < parse_time(self.issued_at, "issued_at"):
            raise ReleaseRejected("bundle.not_yet_valid", f"trust bundle issued {self.issued_at}")
        if now >= parse_time(self.expires_at, "expires_at"):
            raise ReleaseRejected("bundle.expired", f"trust bundle expired at {self.expires_at}")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_trust_bundle(obj: object) -> TrustBundle:
    """Parse a bundle from JSON text or a decoded object; ``bundle.malformed`` names the field."""
    if isinstance(obj, TrustBundle):
        return obj
    if isinstance(obj, str | bytes):
        try:
            obj = strict_loads(obj, max_bytes=MAX_BUNDLE_BYTES)
        except JsonRefused as exc:
            raise ReleaseRejected("bundle.malformed", f"trust bundle is refused: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ReleaseRejected("bundle.malformed", "trust bundle must be a JSON object")
    try:
        return TrustBundle.model_validate(obj)
    except ValidationError as exc:
        raise ReleaseRejected("bundle.malformed", describe_validation_error(exc)) from None
