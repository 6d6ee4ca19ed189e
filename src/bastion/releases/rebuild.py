"""Reproducibility: rerun the build a provenance records and compare the bytes.

The provenance is verified first (trusted builder, allowlist, build type, exact parameters)
so that only a command a trusted builder signed is ever executed, and only inside a fresh
export of the recorded commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bastion.errors import InputError
from bastion.releases.builder import run_build
from bastion.releases.dsse import Envelope
from bastion.releases.policy import ReleasePolicy
from bastion.releases.provenance import check_provenance


@dataclass(frozen=True)
class RebuildResult:
    reproducible: bool
    commit: str
    command: list[str]
    expected_sha256: list[str]
    rebuilt_sha256: str
    artifact_sha256: str | None
    """The sha256 of the artifact given to compare with, if any."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rebuild(
    provenance: Envelope,
    policy: ReleasePolicy,
    *,
    repo_path: Path,
    artifact: bytes | None = None,
) -> RebuildResult:
    artifact_sha256 = hashlib.sha256(artifact).hexdigest() if artifact is not None else None
    accepted = check_provenance(provenance, artifact_sha256, policy)
    command, output = accepted.rebuild_command, accepted.output
    if command is None or output is None:
        raise InputError(f"build type {accepted.build_type!r} records no rebuild command")
    rebuilt = hashlib.sha256(run_build(repo_path, accepted.commit, command, output)).hexdigest()
    reproducible = rebuilt in accepted.subject_sha256 and (
        artifact_sha256 is None or rebuilt == artifact_sha256
    )
    return RebuildResult(
        reproducible=reproducible,
        commit=accepted.commit,
        command=command,
        expected_sha256=list(accepted.subject_sha256),
        rebuilt_sha256=rebuilt,
        artifact_sha256=artifact_sha256,
    )
