"""The live vault's demo scene runs end to end, checks itself, and leaks nothing to the log."""

from __future__ import annotations

from bastion.demo.live_vault import USER, run_demo
from bastion.demo.platform import sample_user

from .conftest import DemoScene


def test_live_vault_scene(demo_scene: DemoScene) -> None:
    report, entries = demo_scene(run_demo)
    assert report["ok"] and len(report["steps"]) == 4
    types = {e.split(b'"type":"')[1].split(b'"')[0] for e in entries if b'"type":"' in e}
    assert {b"data.write", b"deletion.receipt", b"legal.hold", b"subject.erasure"} <= types
    user = sample_user(95_001)
    raw = [USER, str(user["email"]), "new.address@example.com", str(user["name"])]
    assert [(i, v) for i, e in enumerate(entries) for v in raw if v.encode() in e] == []
