"""in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md).

Validated with pydantic; serialized as RFC 8785 canonical JSON so that a payload's bytes are
reproducible. Pure, no I/O.

Parsing follows the framework's rules: consumers MUST ignore unrecognized fields (so a
Statement or ResourceDescriptor from a newer minor version is accepted and its extra fields
dropped), while the required fields are still required: ``_type`` (present, exactly v1),
``subject`` (non-empty, and every subject carries a non-empty ``digest``) and
``predicateType``. The payload is parsed strictly (``strictjson``): bounded, and an object
that names a key twice is refused rather than read one way here and another way elsewhere.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.events import canonical
from bastion.releases.errors import ReleaseRejected
from bastion.releases.strictjson import JsonRefused
from bastion.releases.strictjson import loads as strict_loads

STATEMENT_TYPE: Literal["https://in-toto.io/Statement/v1"] = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

MAX_STATEMENT_BYTES = 256 * 1024  # the DSSE payload limit
_HEX = re.compile(r"^[0-9a-f]+$")
# Lengths for the digest algorithms we check; others are carried but never trusted.
_DIGEST_HEX_LENGTHS = {"sha256": (64,), "sha512": (128,), "gitCommit": (40, 64), "sha1": (40,)}


class ResourceDescriptor(BaseModel):
    """in-toto ResourceDescriptor v1: at least one of uri, digest or content."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str | None = None
    uri: str | None = None
    digest: dict[str, str] | None = None
    content: str | None = None
    downloadLocation: str | None = None
    mediaType: str | None = None
    annotations: dict[str, Any] | None = None

    @field_validator("digest")
    @classmethod
    def _digest_hex(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("digest must not be empty")
        for alg, hexval in value.items():
            if alg in _DIGEST_HEX_LENGTHS and (
                not _HEX.match(hexval) or len(hexval) not in _DIGEST_HEX_LENGTHS[alg]
            ):
                raise ValueError(f"digest {alg!r} must be lowercase hex of the right length")
        return value

    @model_validator(mode="after")
    def _something_identifies(self) -> ResourceDescriptor:
        if self.uri is None and self.digest is None and self.content is None:
            raise ValueError("a resource needs at least one of uri, digest, content")
        return self


class Statement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(default=STATEMENT_TYPE, alias="_type")
    subject: list[ResourceDescriptor] = Field(min_length=1)
    predicateType: str = Field(min_length=1)
    predicate: dict[str, Any]

    @field_validator("subject")
    @classmethod
    def _subjects_have_digests(cls, value: list[ResourceDescriptor]) -> list[ResourceDescriptor]:
        # Statement v1: "subject ... digest: REQUIRED"; a name or uri alone identifies nothing.
        for i, subject in enumerate(value):
            if not subject.digest:
                raise ValueError(f"subject[{i}] has no digest (in-toto v1 requires one)")
        return value

    def to_payload(self) -> bytes:
        return canonical(self.model_dump(mode="json", by_alias=True, exclude_none=True))

    def subject_digests(self, algorithm: str) -> set[str]:
        return {s.digest[algorithm] for s in self.subject if s.digest and algorithm in s.digest}


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field {where!r}: {first['msg']}{more}"


def parse_statement(payload: bytes, predicate_type: str, what: str) -> Statement:
    """Parse a DSSE payload as a Statement v1 with the expected predicate type."""
    try:
        data = strict_loads(payload, max_bytes=MAX_STATEMENT_BYTES)
    except JsonRefused as exc:
        raise ReleaseRejected("statement.malformed", f"{what}: payload refused: {exc}") from None
    if not isinstance(data, dict):
        raise ReleaseRejected("statement.malformed", f"{what}: payload must be a JSON object")
    if "_type" not in data:  # the model defaults it for producers; a consumer requires it
        raise ReleaseRejected("statement.malformed", f"{what}: field '_type' is required")
    try:
        statement = Statement.model_validate(data)
    except ValidationError as exc:
        raise ReleaseRejected(
            "statement.malformed", f"{what}: {describe_validation_error(exc)}"
        ) from None
    if statement.predicateType != predicate_type:
        raise ReleaseRejected(
            "statement.predicate_type",
            f"{what}: predicateType is {statement.predicateType!r}, expected {predicate_type!r}",
        )
    return statement
