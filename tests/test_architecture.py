"""Dependencies point one way (see docs/ARCHITECTURE.md). This test reads every import."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bastion"

FOUNDATION = {"clock", "errors", "home", "events"}

# part -> parts it may import (besides the foundation and itself)
ALLOWED: dict[str, set[str]] = {
    "store": set(),
    "catalog": set(),
    "keys": {"store"},
    "synth": {"catalog"},
    "vault": {"catalog", "keys", "store", "ledger.api"},
    "ledger": {"store", "keys"},
    "policy": {"catalog", "store", "keys", "ledger.api"},
    "releases": {"keys", "store", "ledger"},
    "cleanroom": {"catalog", "store", "ledger.api", "synth"},
    "gateway": {"catalog", "keys", "store", "vault", "ledger", "policy", "cleanroom", "synth"},
}

# The auditor's side of the ledger: formats and the verifier import no server code.
VERIFIER_MODULES = {
    "merkle",
    "tiles",
    "note",
    "checkpoint",
    "cosignature",
    "tlogproof",
    "verifier",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from bastion.ledger import merkle` imports bastion.ledger.merkle.
            if node.module.count(".") == 1:
                found.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return {m for m in found if m == "bastion" or m.startswith("bastion.")}


def allowed(part: str, target: str) -> bool:
    parts = target.split(".")
    if len(parts) < 2 or parts[1] in FOUNDATION or parts[1] == part:
        return True
    name = parts[1]
    sub = ".".join(parts[1:3])
    grants = ALLOWED.get(part, set())
    return name in grants or sub in grants


def test_parts_depend_only_downwards() -> None:
    violations = []
    for part in ALLOWED:
        for path in (SRC / part).rglob("*.py"):
            for target in imports_of(path):
                if not allowed(part, target):
                    violations.append(f"{path.relative_to(SRC)} imports {target}")
    assert violations == []


def test_foundation_imports_no_part() -> None:
    for name in FOUNDATION:
        path = SRC / f"{name}.py"
        if not path.exists():
            path = SRC / name / "__init__.py"
        targets = imports_of(path)
        assert all(t.split(".")[1] in FOUNDATION for t in targets if "." in t), (name, targets)


def test_ledger_verifier_imports_no_server_code() -> None:
    for module in VERIFIER_MODULES:
        for target in imports_of(SRC / "ledger" / f"{module}.py"):
            parts = target.split(".")
            ok = parts[1] in {"clock", "errors"} or (
                parts[1] == "ledger" and len(parts) > 2 and parts[2] in VERIFIER_MODULES
            )
            assert ok, f"ledger/{module}.py imports {target}"


# Presentation is the command line's: the parts return models, and only the composition
# root (``cli``, and the ``demo`` story beside it) draws them with Rich.
PRESENTATION = {"cli", "demo"}


def test_only_the_cli_renders_with_rich() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        if top in PRESENTATION:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "rich" or n.startswith("rich.") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []
