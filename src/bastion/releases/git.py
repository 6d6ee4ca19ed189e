"""The few git queries reviews and builds need, answered by ``git`` itself."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from bastion.errors import InputError

_EMAIL_IN_TRAILER = re.compile(r"<([^<>\s]+@[^<>\s]+)>")


def git(repo: Path, *args: str, input_bytes: bytes | None = None) -> bytes:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=input_bytes,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
    except FileNotFoundError:
        raise InputError("git is not installed") from None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(
            f"git {args[0]} failed: {message[-1] if message else 'exit ' + str(proc.returncode)}",
            file=str(repo),
        )
    return proc.stdout


def resolve_commit(repo: Path, rev: str) -> str:
    if rev.startswith("-"):
        raise InputError(f"invalid revision {rev!r}", file=str(repo))
    return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    try:
        git(repo, "merge-base", "--is-ancestor", ancestor, descendant)
    except InputError:
        return False
    return True


def count_commits(repo: Path, base: str | None, head: str) -> int:
    spec = f"{base}..{head}" if base else head
    return int(git(repo, "rev-list", "--count", spec).decode().strip())


def range_identities(repo: Path, base: str | None, head: str) -> list[str]:
    """Lower-cased author, committer and ``Co-authored-by`` e-mails of every commit in range."""
    spec = f"{base}..{head}" if base else head
    fmt = "%ae%x00%ce%x00%(trailers:key=Co-authored-by,valueonly,separator=%x01)%x1e"
    out = git(repo, "log", f"--format={fmt}", spec).decode("utf-8", "replace")
    emails: set[str] = set()
    for record in out.split("\x1e"):
        fields = record.strip("\n").split("\x00")
        if len(fields) < 2:
            continue
        emails.update(f.strip().lower() for f in fields[:2] if f.strip())
        if len(fields) > 2:
            emails.update(m.lower() for m in _EMAIL_IN_TRAILER.findall(fields[2]))
    return sorted(emails)


def commit_time(repo: Path, commit: str) -> int:
    return int(git(repo, "show", "-s", "--format=%ct", commit).decode().strip())


def export_commit(repo: Path, commit: str, dest: Path) -> None:
    """Write the tree of ``commit`` into ``dest`` (no .git): a clean, exact source checkout."""
    archive = git(repo, "archive", "--format=tar", commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
