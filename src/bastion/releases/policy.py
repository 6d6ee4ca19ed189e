"""The release policy: who may review which repository, which builders and build types count.

One document, validated with pydantic. Its RFC 8785 digest is what the custodian's VSA names
(``policy.digest``), and the trust bundle shipped to clients embeds it, so a phone evaluates
the very rules the custodian evaluated. Pure, no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.events import canonical
from bastion.releases.dsse import TrustedKey, public_key_bytes, public_key_from_b64
from bastion.releases.errors import ReleaseRejected

POLICY_URI = "https://bastion.dev/releases/policy/v1"
GIT_COMMAND_BUILD_TYPE = "https://bastion.dev/buildtypes/git-command/v1"
GIT_COMMAND_PARAMETERS = ("command", "commit", "output", "repository")

_EMAILISH = re.compile(r"^[^@\s]+@[^@\s]+$")


class StrictModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RepositoryRule(StrictModel):
    name: str = Field(min_length=1, max_length=256)
    uri: str = Field(min_length=1, max_length=1024)
    required_reviewers: int = Field(default=2, ge=1, le=16)


class KeyHolder(StrictModel):
    """A reviewer or builder and the one Ed25519 public key (base64, raw 32 bytes) it signs with."""

    id: str = Field(min_length=1, max_length=512)
    public_key: str
    emails: list[str] = []
    """Reviewers: every address they commit under, compared with the range's authors."""

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        try:
            public_key_from_b64(value)
        except ReleaseRejected as exc:
            raise ValueError(exc.detail) from None
        return value

    def identities(self) -> set[str]:
        """Lower-cased identities that must not appear among a change's authors."""
        ids = {e.strip().lower() for e in self.emails}
        if _EMAILISH.match(self.id):
            ids.add(self.id.strip().lower())
        return ids

    @functools.cached_property
    def _trusted_key(self) -> TrustedKey:
        return TrustedKey(self.id, public_key_from_b64(self.public_key))

    def trusted_key(self) -> TrustedKey:
        """The decoded key (once per holder: holders are immutable)."""
        return self._trusted_key


class BuildTypeRule(StrictModel):
    uri: str = Field(min_length=1)
    external_parameters: list[str] = Field(min_length=1)
    """Exactly these externalParameters, no more and no fewer."""


def _default_build_types() -> list[BuildTypeRule]:
    return [
        BuildTypeRule(uri=GIT_COMMAND_BUILD_TYPE, external_parameters=list(GIT_COMMAND_PARAMETERS))
    ]


class ReleasePolicy(StrictModel):
    version: Literal[1] = 1
    uri: str = POLICY_URI
    repositories: list[RepositoryRule] = []
    reviewers: list[KeyHolder] = []
    builders: list[KeyHolder] = []
    build_types: list[BuildTypeRule] = Field(default_factory=_default_build_types)
    verified_levels: list[str] = ["SLSA_BUILD_LEVEL_2", "BASTION_INDEPENDENT_REVIEW"]

    @model_validator(mode="after")
    def _unique(self) -> ReleasePolicy:
        for label, values in (
            ("repositories[].name", [r.name for r in self.repositories]),
            ("repositories[].uri", [r.uri for r in self.repositories]),
            ("reviewers[].id", [r.id for r in self.reviewers]),
            ("builders[].id", [b.id for b in self.builders]),
            ("build_types[].uri", [t.uri for t in self.build_types]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"{label} must be unique")
        # One key, one reviewer: otherwise a single key could count as two reviewers.
        keys = [public_key_bytes(r.trusted_key().key) for r in self.reviewers]
        if len(set(keys)) != len(keys):
            raise ValueError("two reviewers share a public key")
        return self

    @functools.cached_property
    def _digest(self) -> str:
        return hashlib.sha256(canonical(self.model_dump(mode="json"))).hexdigest()

    def digest(self) -> str:
        """Hex SHA-256 of the policy's RFC 8785 JSON: what a VSA's ``policy.digest`` names."""
        return self._digest

    def repository(self, name: str) -> RepositoryRule:
        for repo in self.repositories:
            if repo.name == name:
                return repo
        raise ReleaseRejected("policy.unknown_repository", f"repository {name!r} is not in policy")

    def repository_by_uri(self, uri: str) -> RepositoryRule | None:
        return next((r for r in self.repositories if r.uri == uri), None)

    def reviewer(self, reviewer_id: str) -> KeyHolder | None:
        return next((r for r in self.reviewers if r.id == reviewer_id), None)

    def builder(self, builder_id: str) -> KeyHolder | None:
        return next((b for b in self.builders if b.id == builder_id), None)

    def build_type(self, uri: str) -> BuildTypeRule | None:
        return next((t for t in self.build_types if t.uri == uri), None)

    def reviewer_keys(self) -> list[TrustedKey]:
        return [r.trusted_key() for r in self.reviewers]

    def builder_keys(self) -> list[TrustedKey]:
        return [b.trusted_key() for b in self.builders]
