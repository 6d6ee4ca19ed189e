"""The gateway uses other parts only through their public API.

It must not reach into the vault's private helpers (``vault._pseudonyms``) or read the
vault's tables itself: those are the vault's to change, and a lookup done beside the vault
can disagree with it (a shredded subject, a pseudonymized id). Checked over the source, so a
new private reach fails here before review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bastion.gateway

GATEWAY = Path(bastion.gateway.__file__).parent
# Tables that belong to other parts; the gateway's own are gateway_*.
FOREIGN_TABLES = ("vault_", "ledger_", "access_requests", "access_grants", "policy_")


def _sources() -> list[Path]:
    files = sorted(GATEWAY.rglob("*.py"))
    assert len(files) > 10
    return files


def test_no_private_attribute_of_another_object() -> None:
    reaches: list[str] = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            reaches.append(f"{path.relative_to(GATEWAY)}:{node.lineno} .{name}")
    assert reaches == []


def test_no_sql_on_other_parts_tables() -> None:
    found: list[str] = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if any(t in text for t in FOREIGN_TABLES) and any(
                    kw in text.upper() for kw in ("SELECT ", "INSERT ", "UPDATE ", "DELETE ")
                ):
                    found.append(f"{path.relative_to(GATEWAY)}:{node.lineno}")
    assert found == []
