"""Tests and benchmarks read only what is inside the repository (a fresh clone must run them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# An absolute path literal handed to Path()/open(), or the workspace's shared folder by name.
# Built from parts so that this file does not match itself. /dev and /proc are the kernel's
# interfaces (devices, a process's own CPU counters), on every Linux machine: not files.
_ABSOLUTE = re.compile(r"""(?:Path|open)\(\s*f?["']/(?!dev/|proc/)""")
_WORKSPACE = re.compile("/" + "work/")


def _sources() -> list[Path]:
    return sorted(
        p
        for top in ("tests", "bench")
        for p in (ROOT / top).rglob("*")
        if p.suffix in {".py", ".sh", ".toml", ".json", ".cfg"} and p.is_file()
    )


def test_no_test_or_benchmark_names_a_path_outside_the_repository() -> None:
    sources = _sources()
    assert any(p.name == "test_fmt_merkle.py" for p in sources)  # the scan found the suite
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if _ABSOLUTE.search(line) or _WORKSPACE.search(line)
    ]
    assert offenders == []


def test_ledger_format_vectors_are_vendored_with_their_license() -> None:
    vectors = ROOT / "tests" / "ledger_formats" / "vectors"
    assert (vectors / "README.md").is_file()
    assert (vectors / "merkle" / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert len(list((vectors / "merkle").rglob("*.json"))) >= 150
    assert (vectors / "signed-note" / "vectors.json").is_file()
