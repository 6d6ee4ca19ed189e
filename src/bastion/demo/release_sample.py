"""A small sample app repository with a reproducible build script, for the demo and tests.

Commits get fixed identities and dates through git's environment variables, so the sample is
the same on every machine and needs no global git configuration.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bastion.releases import git

# The build script lives in the repository it builds, as in real projects. It writes a
# gzip'd ustar archive of app/ with sorted names, fixed owners and modes, mtime taken from
# SOURCE_DATE_EPOCH and a zero gzip timestamp: the same commit gives the same bytes.
BUILD_SCRIPT = '''\
"""Reproducible build: python3 build.py OUTPUT."""
import gzip
import io
import os
import sys
import tarfile
from pathlib import Path

out = Path(sys.argv[1])
mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for path in sorted(p for p in Path("app").rglob("*") if p.is_file()):
        data = path.read_bytes()
        info = tarfile.TarInfo(path.as_posix())
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
out.parent.mkdir(parents=True, exist_ok=True)
out.write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
'''

BUILD_COMMAND = ["python3", "build.py", "dist/app.tar.gz"]
BUILD_OUTPUT = "dist/app.tar.gz"


@dataclass(frozen=True)
class Person:
    name: str
    email: str


def _env(person: Person, when: datetime) -> dict[str, str]:
    stamp = f"{int(when.timestamp())} +0000"
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": person.name,
        "GIT_AUTHOR_EMAIL": person.email,
        "GIT_COMMITTER_NAME": person.name,
        "GIT_COMMITTER_EMAIL": person.email,
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }


def commit_files(
    repo: Path, files: dict[str, str], *, author: Person, when: datetime, message: str
) -> str:
    """Write ``files`` (path -> text), commit them as ``author`` at ``when``; return the id."""
    for rel, text in files.items():
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    env = _env(author, when)
    for args in (
        ["add", "--", *files],
        ["-c", "commit.gpgsign=false", "commit", "-q", "-m", message],
    ):
        subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True)
    return git.resolve_commit(repo, "HEAD")


def init_sample_repo(repo: Path, *, author: Person, when: datetime) -> str:
    """Create the sample app repository with one commit; return that commit's id."""
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    return commit_files(
        repo,
        {
            "build.py": BUILD_SCRIPT,
            "app/main.py": 'print("hello from the sample app")\n',
            "app/config.json": '{"telemetry": false, "region": "us"}\n',
            ".gitignore": "dist/\n",
        },
        author=author,
        when=when,
        message="Sample app",
    )
