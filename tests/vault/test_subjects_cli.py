"""``bastion subjects …`` and ``bastion vault sweep`` on a real home, both backends."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import vault_rows as R
from test_vault_cli import _jsonl, home_env, run  # noqa: F401  (the home fixture)

OMAR = json.dumps(
    {
        "id": "omar",
        "role": "privacy_officer",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "restricted",
        "amr": ["pwd", "otp"],
    }
)
ALICE = json.dumps(
    {
        "id": "alice",
        "role": "engineer",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "confidential",
        "amr": ["pwd", "mfa"],
    }
)


def test_subjects_cli(home_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    assert run(home_env, "init", "--json")[0] == 0
    users = _jsonl(tmp_path / "users.jsonl", [R.user(i) for i in range(1, 4)])
    events = _jsonl(tmp_path / "events.jsonl", [R.event(i, 1 + i % 3) for i in range(9)])
    assert run(home_env, "ingest", "users", str(users), "--json")[0] == 0
    assert run(home_env, "ingest", "events", str(events), "--json")[0] == 0
    out = tmp_path / "export.json"
    code, body = run(
        home_env, "subjects", "export", "u00001", "--out", str(out), "--as", OMAR, "--json"
    )
    assert code == 0 and body["records"] == 1 + 3, body
    doc = json.loads(out.read_text())
    assert doc["format"] == "bastion.subject-export" and doc["subject"] == "u00001"
    assert doc["datasets"]["users"]["records"][0]["values"]["email"] == "person1@example.com"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # An engineer may not: a non-zero exit naming the refusal, no file written.
    other = tmp_path / "nope.json"
    code, body = run(
        home_env, "subjects", "export", "u00001", "--out", str(other), "--as", ALICE, "--json"
    )
    assert code != 0 and "denied" in body["message"] and not other.exists()
    # A hold keeps an erasure pending; releasing it runs the erasure.
    code, body = run(
        home_env, "subjects", "hold", "u00002", "--reason", "litigation", "--as", OMAR, "--json"
    )
    assert code == 0, body
    hold_id = body["hold"]["id"]
    code, body = run(
        home_env, "subjects", "hold", "u00002", "--reason", "x", "--as", ALICE, "--json"
    )
    assert code != 0
    code, body = run(home_env, "subjects", "erase", "u00002", "--as", OMAR, "--json")
    assert code == 0 and body["request"]["status"] == "held"
    code, body = run(home_env, "subjects", "process-erasures", "--json")
    assert code == 0 and body["executed"] == []
    code, body = run(home_env, "subjects", "holds", "--as", OMAR, "--json")
    assert code == 0 and [h["id"] for h in body["holds"]] == [hold_id]
    code, body = run(
        home_env, "subjects", "release", hold_id, "--reason", "closed", "--as", OMAR, "--json"
    )
    assert code == 0 and body["hold"]["active"] is False
    code, body = run(home_env, "subjects", "erase", "u00002", "--as", OMAR, "--json")
    assert code != 0 and "erased" in body["message"]
    # Nothing is past retention yet: the sweep deletes nothing.
    code, body = run(home_env, "vault", "sweep", "--json")
    assert code == 0 and body["deleted"] == {"events": 0} and body["total"] == 0
