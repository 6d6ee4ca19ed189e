"""The policy README's account of what a covered person may receive names the shipped pack's
real rules: the forbids and invariants it cites exist, so a rename cannot leave it stale."""

from __future__ import annotations

import re
from pathlib import Path

from bastion.policy import default_policies
from bastion.policy.invariants import shipped_invariants

README = Path(__file__).parents[2] / "src" / "bastion" / "policy" / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_covered_person_section_cites_the_rules_that_enforce_it() -> None:
    section = _section("What a covered person may receive")
    cited = set(re.findall(r"`([a-z][a-z0-9-]+)`", section))
    policies = {p.id for p in default_policies().policies}
    invariants = {i.id for i in shipped_invariants().invariants}
    assert {
        "covered-persons-denied-protected",
        "covered-persons-no-linkable-identifiers",
        "covered-persons-cannot-approve-or-administer",
    } <= cited & policies
    assert {
        "no-protected-field-to-covered-persons",
        "no-linkable-identifier-to-covered-persons",
    } <= cited & invariants
    assert "pack/invariants.yaml" in section and "every load" in section
