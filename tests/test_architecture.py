"""Dependencies point one way (see docs/ARCHITECTURE.md). This test reads every import."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bastion"

FOUNDATION = {"clock", "errors", "home", "settings", "extras", "logs", "events", "durable"}

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
    "cleanroom": {"catalog", "store", "ledger.api", "synth", "vault"},
    "gateway": {
        "catalog",
        "keys",
        "store",
        "vault",
        "ledger",
        "policy",
        "cleanroom",
        "synth",
        "egress",
    },
    # Flows to outside recipients: Cedar decides on each recipient, the clean room's release
    # layer makes aggregate flows, and manifests are DSSE envelopes as releases sign them.
    "egress": {"catalog", "keys", "store", "vault", "ledger", "policy", "cleanroom", "releases"},
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


@dataclass(frozen=True)
class Import:
    target: str  # the module it loads: ``from bastion import vault`` is bastion.vault
    deferred: bool  # inside a function: loaded when called, not when imported
    type_only: bool  # under ``if TYPE_CHECKING``: never loaded at run time


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class _Reader(ast.NodeVisitor):
    """Every import of one file, resolved: relative ones against its package, and
    ``from package import name`` to the submodule when ``name`` is one."""

    def __init__(self, module: str, is_package: bool, root: Path) -> None:
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.root = root
        self.depth = 0
        self.type_checking = 0
        self.found: list[Import] = []

    def _add(self, target: str) -> None:
        self.found.append(Import(target, self.depth > 0, self.type_checking > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            self.type_checking += 1
            for stmt in node.body:
                self.visit(stmt)
            self.type_checking -= 1
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package[: len(self.package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        for alias in node.names:
            candidate = f"{module}.{alias.name}"
            self._add(candidate if _is_module(candidate, self.root) else module)


def read_imports(path: Path, root: Path = SRC.parent) -> list[Import]:
    """The ``bastion`` imports of one file under ``root`` (the folder holding ``bastion``)."""
    reader = _Reader(module_name(path, root), path.name == "__init__.py", root)
    reader.visit(ast.parse(path.read_text()))
    return [i for i in reader.found if i.target == "bastion" or i.target.startswith("bastion.")]


def imports_of(path: Path) -> set[str]:
    return {i.target for i in read_imports(path)}


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


# ---- the reader itself: the holes it used to have -----------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_reader_resolves_package_and_relative_imports(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "bastion/__init__.py": "",
            "bastion/vault/__init__.py": "",
            "bastion/vault/plan.py": "",
            "bastion/policy/__init__.py": "",
            "bastion/policy/engine.py": "",
            "bastion/policy/x.py": (
                "from typing import TYPE_CHECKING\n"
                "from bastion import vault\n"
                "from .. import vault as v2\n"
                "from ..vault.plan import ReadPlan\n"
                "from . import engine\n"
                "from .engine import Engine\n"
                "if TYPE_CHECKING:\n"
                "    from bastion.gateway import app\n"
                "def f():\n"
                "    from bastion.ledger import log\n"
            ),
        },
    )
    found = read_imports(tmp_path / "bastion/policy/x.py", tmp_path)
    assert [(i.target, i.deferred, i.type_only) for i in found] == [
        ("bastion.vault", False, False),  # was recorded as just "bastion", and allowed
        ("bastion.vault", False, False),  # relative imports were ignored
        ("bastion.vault.plan", False, False),
        ("bastion.policy.engine", False, False),
        ("bastion.policy.engine", False, False),
        ("bastion.gateway", False, True),
        ("bastion.ledger", True, False),
    ]
    assert not allowed("policy", "bastion.vault")  # so the layering test now sees it


def _graph() -> dict[str, list[Import]]:
    return {module_name(p, SRC.parent): read_imports(p) for p in SRC.rglob("*.py")}


def _reaches(eager: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(eager.get(node, ()))
    return False


def test_no_import_cycles_and_no_deferred_import_that_hides_one() -> None:
    """A cycle of module-level imports is a tangle; an import moved into a function only so
    that a cycle does not fail at import time is the same tangle, hidden. Deferred imports
    that keep start-up light (the CLI's, an optional extra's) close no cycle and are fine."""
    graph = _graph()
    eager = {
        m: {i.target for i in imps if not i.deferred and not i.type_only}
        for m, imps in graph.items()
    }
    cycles = sorted(
        f"{m} -> {t}"
        for m, targets in eager.items()
        for t in targets
        if t != m and _reaches(eager, t, m)
    )
    assert cycles == []
    hidden = sorted(
        {
            f"{m} -> {i.target}"
            for m, imps in graph.items()
            for i in imps
            if i.deferred and not i.type_only and i.target != m and _reaches(eager, i.target, m)
        }
    )
    assert hidden == []


def test_nothing_in_the_library_imports_the_demo() -> None:
    offenders = [
        f"{m} imports {i.target}"
        for m, imps in _graph().items()
        if m.split(".")[1:2] not in (["cli"], ["demo"])
        for i in imps
        if i.target == "bastion.demo" or i.target.startswith("bastion.demo.")
    ]
    assert offenders == []


# The recipient's side of egress (``bastion egress verify`` at the parent company or the
# monitor) imports only formats, directly or through anything it imports: no database, vault,
# policy, gateway or CLI, so it can be vendored like the ledger's verifier.
EGRESS_RECIPIENT = {"verify", "replay", "manifest", "payload", "delivery", "trust", "errors"}
RECIPIENT_MAY_REACH = (
    {f"bastion.{name}" for name in FOUNDATION}
    | {f"bastion.egress.{name}" for name in EGRESS_RECIPIENT}
    | {f"bastion.releases.{name}" for name in ("dsse", "intoto", "errors", "strictjson")}
    | {f"bastion.ledger.{name}" for name in (*VERIFIER_MODULES, "anchors")}
    | {"bastion", "bastion.egress", "bastion.releases", "bastion.ledger"}
)


def test_the_egress_recipient_imports_only_formats() -> None:
    graph = _graph()
    loaded = {  # everything that can run: deferred imports too, type-only ones not
        m: {i.target for i in imps if not i.type_only} for m, imps in graph.items()
    }
    offenders = []
    for name in EGRESS_RECIPIENT:
        start = f"bastion.egress.{name}"
        assert start in graph, f"{start} is missing"
        seen: set[str] = set()
        stack = [start]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node not in RECIPIENT_MAY_REACH:
                offenders.append(f"{start} reaches {node}")
                continue
            stack.extend(loaded.get(node, ()))
    assert offenders == []
