"""The custodian's egress commands on a real home: load, list, run, show, retire, each with
--json; a refused load exits non-zero, names its reasons, and loads nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.demo.platform import sample_event, sample_user
from bastion.egress.payload import public_key_to_b64

from .cli_support import run

FLOW = """
flows:
  - name: video-parent
    version: 1
    kind: records
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {key}
    source: {{dataset: events}}
    fields:
      {fields}
    schedule: {{every: 1h}}
    destination: {{type: files, path: outbox}}
"""
GOOD = "video_id: pseudonymize\n      event_type: keep\n      day: keep"
EMAIL = "user_id: keep\n      event_type: keep"


def test_the_custodian_loads_runs_shows_and_retires_a_flow(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    run("init", "--home", home, "--origin", f"egress.cli.example/{uuid.uuid4().hex[:8]}")
    for dataset, rows in (
        ("users", [sample_user(n) for n in range(1, 6)]),
        ("events", [sample_event(n, 1 + n % 5) for n in range(1, 21)]),
    ):
        path = tmp_path / f"{dataset}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run("ingest", dataset, str(path), "--home", home)
    key = public_key_to_b64(X25519PrivateKey.generate().public_key())

    bad = tmp_path / "bad.yaml"
    bad.write_text(FLOW.format(key=key, fields=EMAIL))
    refused = run("egress", "load", str(bad), "--reason", "try", "--home", home, code=2)
    assert refused["ok"] is False and refused["error"] == "FlowRefused"
    codes = {r["code"] for r in refused["detail"]["video-parent"]}
    assert {"identifier.not-pseudonymized", "recipient.denied"} <= codes
    assert run("egress", "list", "--home", home)["flows"] == []

    good = tmp_path / "flows.yaml"
    good.write_text(FLOW.format(key=key, fields=GOOD))
    loaded = run("egress", "load", str(good), "--reason", "daily statistics", "--home", home)
    assert loaded["loaded"] == ["video-parent"]
    again = run("egress", "load", str(good), "--reason", "again", "--home", home)
    assert again["unchanged"] == ["video-parent"] and again["loaded"] == []
    (listed,) = run("egress", "list", "--home", home)["flows"]
    assert listed["recipient"] == "parent-analytics" and listed["runs"] == 0

    ran = run("egress", "run", "video-parent", "--home", home)
    assert ran["status"] == "delivered" and ran["rows"] == 20 and ran["run"] == 1
    assert (tmp_path / "home" / "outbox" / "video-parent" / ran["manifest_id"]).is_dir()
    assert run("egress", "run", "video-parent", "--home", home)["status"] == "nothing-new"
    shown = run("egress", "show", "video-parent", "--home", home)
    assert [r["manifest_id"] for r in shown["runs"]] == [ran["manifest_id"]]
    assert shown["runs"][0]["delivered_at"] is not None

    run("egress", "retire", "video-parent", "--reason", "contract ended", "--home", home)
    stopped = run("egress", "run", "video-parent", "--home", home, code=2)
    assert stopped["ok"] is False and "retired" in stopped["message"]
    missing = run("egress", "run", "no-such-flow", "--home", home, code=2)
    assert "no flow named" in missing["message"]
