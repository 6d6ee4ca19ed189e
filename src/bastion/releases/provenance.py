"""Build provenance: what the builder must attest and the custodian's acceptance rules.

SLSA Provenance v1 in DSSE, accepted only if all of these hold:
- it is signed by a trusted builder key, and that key belongs to the ``builder.id`` it claims;
- ``builder.id`` is on the allowlist and ``buildType`` is known;
- ``externalParameters`` are exactly the build type's expected names (no more, no fewer) and
  name a repository in policy;
- ``resolvedDependencies`` holds exactly one git source, of that repository, whose
  ``gitCommit`` equals ``externalParameters.commit`` (the caller then requires it reviewed);
- the artifact's SHA-256 is among the subject digests.

Pure, no I/O: shared by the custodian's approval and the offline verifier.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from bastion.releases.dsse import Envelope, verify_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE, ResourceDescriptor, Statement, parse_statement
from bastion.releases.policy import GIT_COMMAND_BUILD_TYPE, ReleasePolicy, RepositoryRule
from bastion.releases.slsa import (
    PROVENANCE_TYPE,
    BuildDefinition,
    Builder,
    BuildMetadata,
    Provenance,
    RunDetails,
    dump,
    parse_predicate,
)


def source_uri(repository_uri: str, commit: str) -> str:
    """The SLSA convention for a git source: ``git+<repo>@<commit>``."""
    return f"git+{repository_uri}@{commit}"


def provenance_statement(
    *,
    artifact_name: str,
    artifact_sha256: str,
    repository_uri: str,
    commit: str,
    command: list[str],
    output: str,
    builder_id: str,
    invocation_id: str,
    started_on: str,
    finished_on: str,
) -> Statement:
    """Provenance for the git-command build type: check out ``commit``, run ``command``."""
    predicate = Provenance(
        buildDefinition=BuildDefinition(
            buildType=GIT_COMMAND_BUILD_TYPE,
            externalParameters={
                "repository": repository_uri,
                "commit": commit,
                "command": command,
                "output": output,
            },
            resolvedDependencies=[
                ResourceDescriptor(
                    uri=source_uri(repository_uri, commit), digest={"gitCommit": commit}
                )
            ],
        ),
        runDetails=RunDetails(
            builder=Builder(id=builder_id),
            metadata=BuildMetadata(
                invocationId=invocation_id, startedOn=started_on, finishedOn=finished_on
            ),
        ),
    )
    return Statement(
        subject=[ResourceDescriptor(name=artifact_name, digest={"sha256": artifact_sha256})],
        predicateType=PROVENANCE_TYPE,
        predicate=dump(predicate),
    )


@dataclass(frozen=True)
class AcceptedProvenance:
    builder_id: str
    build_type: str
    repository: RepositoryRule
    commit: str
    external_parameters: dict[str, Any]
    subject_sha256: tuple[str, ...]
    envelope_sha256: str

    @property
    def rebuild_command(self) -> list[str] | None:
        command = self.external_parameters.get("command")
        return list(command) if isinstance(command, list) else None

    @property
    def output(self) -> str | None:
        output = self.external_parameters.get("output")
        return output if isinstance(output, str) else None


def _check_git_command_parameters(params: dict[str, Any]) -> None:
    command = params.get("command")
    if not (
        isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)
    ):
        raise ReleaseRejected(
            "provenance.external_parameters", "externalParameters.command must be argv strings"
        )
    output = params.get("output")
    if not isinstance(output, str) or not output:
        raise ReleaseRejected(
            "provenance.external_parameters", "externalParameters.output must be a path"
        )
    normal = posixpath.normpath(output)
    if normal.startswith(("/", "../")) or normal in ("..", "."):
        raise ReleaseRejected(
            "provenance.external_parameters",
            "externalParameters.output must stay inside the checkout",
        )


def check_provenance(
    envelope: Envelope, artifact_sha256: str | None, policy: ReleasePolicy
) -> AcceptedProvenance:
    """Accept the provenance for ``artifact_sha256`` (``None``: check everything but the subject,
    as a rebuild does before it knows the bytes)."""
    if not policy.builders:
        raise ReleaseRejected("provenance.no_trusted_builders", "policy trusts no builder")
    verified = verify_envelope(
        envelope,
        payload_type=PAYLOAD_TYPE,
        trusted=policy.builder_keys(),
        threshold=1,
        what="provenance",
    )
    statement = parse_statement(verified.payload, PROVENANCE_TYPE, "provenance")
    prov = parse_predicate(Provenance, statement.predicate, "provenance")
    builder_id = prov.runDetails.builder.id
    if policy.builder(builder_id) is None:
        raise ReleaseRejected(
            "provenance.builder_not_allowed", f"builder {builder_id!r} is not on the allowlist"
        )
    if builder_id not in verified.signers:
        raise ReleaseRejected(
            "provenance.builder_key_mismatch",
            f"provenance claims builder {builder_id!r} but was signed by {list(verified.signers)}",
        )
    definition = prov.buildDefinition
    rule = policy.build_type(definition.buildType)
    if rule is None:
        raise ReleaseRejected(
            "provenance.unknown_build_type", f"buildType {definition.buildType!r} is not known"
        )
    params = definition.externalParameters
    expected = set(rule.external_parameters)
    unexpected, missing = sorted(set(params) - expected), sorted(expected - set(params))
    if unexpected or missing:
        raise ReleaseRejected(
            "provenance.external_parameters",
            f"externalParameters must be exactly {sorted(expected)}; "
            f"unexpected {unexpected}, missing {missing}",
        )
    if definition.buildType == GIT_COMMAND_BUILD_TYPE:
        _check_git_command_parameters(params)
    repository_uri = params.get("repository")
    repo = policy.repository_by_uri(repository_uri) if isinstance(repository_uri, str) else None
    if repo is None:
        raise ReleaseRejected(
            "provenance.unknown_repository",
            f"externalParameters.repository {repository_uri!r} is not in policy",
        )
    sources = [d for d in definition.resolvedDependencies if d.digest and "gitCommit" in d.digest]
    if len(sources) != 1:
        raise ReleaseRejected(
            "provenance.source", f"expected exactly one git source, found {len(sources)}"
        )
    assert sources[0].digest is not None
    commit = sources[0].digest["gitCommit"]
    if sources[0].uri != source_uri(repo.uri, commit) or params.get("commit") != commit:
        raise ReleaseRejected(
            "provenance.source",
            "resolvedDependencies git source does not match externalParameters",
        )
    subjects = statement.subject_digests("sha256")
    if not subjects:
        raise ReleaseRejected("provenance.subject", "provenance names no sha256 subject")
    if artifact_sha256 is not None and artifact_sha256 not in subjects:
        raise ReleaseRejected(
            "artifact.digest_mismatch",
            f"artifact sha256 {artifact_sha256} is not a subject of the provenance",
        )
    return AcceptedProvenance(
        builder_id=builder_id,
        build_type=definition.buildType,
        repository=repo,
        commit=commit,
        external_parameters=dict(params),
        subject_sha256=tuple(sorted(subjects)),
        envelope_sha256=envelope.sha256(),
    )
