"""The gateway's demo story runs end to end and checks itself."""

from __future__ import annotations

from bastion.demo.gateway import SUBJECTS, run_demo
from bastion.demo.platform import sample_user

from .conftest import DemoScene


def test_demo_story(demo_scene: DemoScene) -> None:
    report, entries = demo_scene(run_demo)
    assert report["ok"] and len(report["steps"]) == 8
    assert "A policy change that breaks an invariant is refused" in [
        s["step"] for s in report["steps"]
    ]
    # The whole story's log is public: no entry names a demo subject or their values.
    raw = [
        v.encode()
        for n in range(1, len(SUBJECTS) + 1)
        for v in (SUBJECTS[n - 1], *_values(sample_user(9_0000 + n)))
    ]
    assert len(entries) > 10
    assert [(i, v) for i, e in enumerate(entries) for v in raw if v in e] == []


def _values(user: dict[str, object]) -> list[str]:
    device_ids = user["device_ids"]
    assert isinstance(device_ids, list)
    return [str(user["email"]), str(user["phone"]), str(user["name"]), *map(str, device_ids)]
