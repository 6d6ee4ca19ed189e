"""A reference builder for the git-command build type, and the same steps for rebuilds.

The build exports the exact tree of a commit (``git archive``, no .git, no local state) into a
fresh directory and runs the recorded argv there, without a shell, with a pinned environment
(``SOURCE_DATE_EPOCH`` = the commit time, ``LC_ALL=C``, ``TZ=UTC``, ``PYTHONHASHSEED=0``). A
reproducible build script then yields the same bytes anywhere, which is what
``bastion releases rebuild`` checks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import Clock, iso
from bastion.errors import InputError
from bastion.releases import git
from bastion.releases.dsse import Envelope, sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.provenance import provenance_statement

BUILD_TIMEOUT_S = 600


def run_build(repo_path: Path, commit: str, command: list[str], output: str) -> bytes:
    """Export ``commit``, run ``command`` in it, and return the bytes of ``output``."""
    if not command:
        raise InputError("the build command is empty")
    with tempfile.TemporaryDirectory(prefix="bastion-build-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        git.export_commit(repo_path, commit, src)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "LC_ALL": "C",
            "TZ": "UTC",
            "PYTHONHASHSEED": "0",
            "SOURCE_DATE_EPOCH": str(git.commit_time(repo_path, commit)),
        }
        try:
            proc = subprocess.run(
                command,
                cwd=src,
                env=env,
                capture_output=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise InputError(f"build command {command[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise InputError(f"build command timed out after {BUILD_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip()[-400:]
            raise InputError(f"build command exited {proc.returncode}: {tail}")
        produced = (src / output).resolve()
        if not produced.is_relative_to(src.resolve()) or not produced.is_file():
            raise InputError(f"build did not produce {output!r} inside the checkout")
        return produced.read_bytes()


@dataclass(frozen=True)
class BuildResult:
    artifact: bytes
    artifact_name: str
    sha256: str
    commit: str
    provenance: Envelope


def build_with_provenance(
    *,
    repo_path: Path,
    repository_uri: str,
    revision: str,
    command: list[str],
    output: str,
    builder_id: str,
    builder_key: Ed25519PrivateKey,
    clock: Clock,
) -> BuildResult:
    """Build ``revision`` and sign SLSA Provenance v1 for the result with ``builder_key``."""
    commit = git.resolve_commit(repo_path, revision)
    started = iso(clock.now())
    artifact = run_build(repo_path, commit, command, output)
    digest = hashlib.sha256(artifact).hexdigest()
    name = Path(output).name
    statement = provenance_statement(
        artifact_name=name,
        artifact_sha256=digest,
        repository_uri=repository_uri,
        commit=commit,
        command=command,
        output=output,
        builder_id=builder_id,
        invocation_id=str(uuid.uuid4()),
        started_on=started,
        finished_on=iso(clock.now()),
    )
    envelope = sign_envelope(PAYLOAD_TYPE, statement.to_payload(), [builder_key])
    return BuildResult(artifact, name, digest, commit, envelope)
