"""SLSA Provenance v1 and Verification Summary Attestation v1 predicates (pydantic).

- Provenance: https://slsa.dev/spec/v1.0/provenance
- VSA: https://slsa.dev/spec/v1.0/verification_summary

SLSA tells consumers to ignore unknown fields, so these models ignore extras; the fields a
policy decision rests on are required and typed. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import ResourceDescriptor, describe_validation_error

PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
VSA_TYPE = "https://slsa.dev/verification_summary/v1"


class _Slsa(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class BuildDefinition(_Slsa):
    buildType: str = Field(min_length=1)
    externalParameters: dict[str, Any]
    internalParameters: dict[str, Any] | None = None
    resolvedDependencies: list[ResourceDescriptor] = []


class Builder(_Slsa):
    id: str = Field(min_length=1)
    version: dict[str, str] | None = None
    builderDependencies: list[ResourceDescriptor] = []


class BuildMetadata(_Slsa):
    invocationId: str | None = None
    startedOn: str | None = None
    finishedOn: str | None = None


class RunDetails(_Slsa):
    builder: Builder
    metadata: BuildMetadata | None = None
    byproducts: list[ResourceDescriptor] = []


class Provenance(_Slsa):
    buildDefinition: BuildDefinition
    runDetails: RunDetails


class Verifier(_Slsa):
    id: str = Field(min_length=1)
    version: dict[str, str] | None = None


class PolicyRef(_Slsa):
    uri: str = Field(min_length=1)
    digest: dict[str, str]


class InputAttestation(_Slsa):
    uri: str = Field(min_length=1)
    digest: dict[str, str]


class VerificationSummary(_Slsa):
    verifier: Verifier
    timeVerified: str
    resourceUri: str = Field(min_length=1)
    policy: PolicyRef
    inputAttestations: list[InputAttestation] = []
    verificationResult: Literal["PASSED", "FAILED"]
    verifiedLevels: list[str]
    dependencyLevels: dict[str, int] | None = None
    slsaVersion: str | None = None


M = TypeVar("M", bound=BaseModel)


def parse_predicate(model: type[M], predicate: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(predicate)
    except ValidationError as exc:
        raise ReleaseRejected(
            "predicate.malformed", f"{what}: predicate {describe_validation_error(exc)}"
        ) from None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)
