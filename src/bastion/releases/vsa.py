"""The custodian's release approval: a SLSA Verification Summary Attestation v1.

The VSA's subject is the artifact (sha256). Its ``resourceUri`` names the app and channel
(``urn:bastion:release:<app>:<channel>``), so an approval for the beta channel cannot be
replayed on stable. ``policy`` is the release policy's URI and RFC 8785 digest, and
``inputAttestations`` are the digests of the provenance and review envelopes the custodian
checked. Pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bastion.releases.dsse import Envelope, TrustedKey, verify_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE, ResourceDescriptor, Statement, parse_statement
from bastion.releases.policy import ReleasePolicy
from bastion.releases.slsa import (
    VSA_TYPE,
    InputAttestation,
    PolicyRef,
    VerificationSummary,
    Verifier,
    dump,
    parse_predicate,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ATTESTATION_URI = "urn:bastion:attestation:{kind}"


def check_release_name(value: str, field: str) -> str:
    """App ids and channels are URI-safe names, so the resource URI is unambiguous."""
    if not _NAME.match(value):
        raise ReleaseRejected(
            "release.bad_name", f"{field} {value!r} must match [A-Za-z0-9][A-Za-z0-9._-]*"
        )
    return value


def resource_uri(app: str, channel: str) -> str:
    check_release_name(app, "app")
    check_release_name(channel, "channel")
    return f"urn:bastion:release:{app}:{channel}"


def vsa_statement(
    *,
    artifact_name: str,
    artifact_sha256: str,
    verifier_id: str,
    time_verified: str,
    app: str,
    channel: str,
    policy: ReleasePolicy,
    inputs: Mapping[str, Envelope],
    verified_levels: Sequence[str],
) -> Statement:
    predicate = VerificationSummary(
        verifier=Verifier(id=verifier_id),
        timeVerified=time_verified,
        resourceUri=resource_uri(app, channel),
        policy=PolicyRef(uri=policy.uri, digest={"sha256": policy.digest()}),
        inputAttestations=[
            InputAttestation(uri=ATTESTATION_URI.format(kind=kind), digest={"sha256": env.sha256()})
            for kind, env in sorted(inputs.items())
        ],
        verificationResult="PASSED",
        verifiedLevels=list(verified_levels),
        slsaVersion="1.0",
    )
    return Statement(
        subject=[ResourceDescriptor(name=artifact_name, digest={"sha256": artifact_sha256})],
        predicateType=VSA_TYPE,
        predicate=dump(predicate),
    )


@dataclass(frozen=True)
class AcceptedVsa:
    summary: VerificationSummary
    signers: tuple[str, ...]


def check_vsa(
    envelope: Envelope,
    *,
    custodian_keys: Sequence[TrustedKey],
    threshold: int,
    verifier_id: str,
    artifact_sha256: str,
    app: str,
    channel: str,
    inputs: Mapping[str, Envelope],
) -> AcceptedVsa:
    """Accept the VSA for exactly this artifact, app and channel, and exactly these inputs."""
    verified = verify_envelope(
        envelope,
        payload_type=PAYLOAD_TYPE,
        trusted=custodian_keys,
        threshold=threshold,
        what="VSA",
    )
    statement = parse_statement(verified.payload, VSA_TYPE, "VSA")
    summary = parse_predicate(VerificationSummary, statement.predicate, "VSA")
    if summary.verifier.id != verifier_id:
        raise ReleaseRejected(
            "vsa.verifier", f"VSA verifier {summary.verifier.id!r} is not {verifier_id!r}"
        )
    if summary.verificationResult != "PASSED":
        raise ReleaseRejected("vsa.result", f"VSA result is {summary.verificationResult}")
    if artifact_sha256 not in statement.subject_digests("sha256"):
        raise ReleaseRejected(
            "artifact.digest_mismatch", "the artifact is not the subject of the VSA"
        )
    expected_uri = resource_uri(app, channel)
    if summary.resourceUri != expected_uri:
        raise ReleaseRejected(
            "vsa.resource", f"VSA is for {summary.resourceUri!r}, not {expected_uri!r}"
        )
    claimed = {(a.uri, a.digest.get("sha256")) for a in summary.inputAttestations}
    given = {(ATTESTATION_URI.format(kind=k), e.sha256()) for k, e in inputs.items()}
    if claimed != given:
        raise ReleaseRejected(
            "vsa.inputs", "VSA inputAttestations do not match the attestations presented"
        )
    return AcceptedVsa(summary, verified.signers)
