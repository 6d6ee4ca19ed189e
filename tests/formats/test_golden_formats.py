"""Bastion's own formats, as version 1 wrote them, still read: events, grants, a whole home.

The files under ``golden/v1`` were written once by ``make_golden.py`` and are never
regenerated (``docs/FORMATS.md``): a change that breaks one of these tests breaks every
deployment's existing log, vault or grants.
"""

from __future__ import annotations

import base64
import json
import shutil
import typing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion import events
from bastion.clock import FixedClock, iso
from bastion.events import AccessDecision, Actor, FieldRelease, decode_event, encode_event
from bastion.home import Home
from bastion.ledger import merkle
from bastion.ledger.checkpoint import open_checkpoint
from bastion.ledger.log import open_log
from bastion.ledger.note import NoteVerifier
from bastion.policy.grants import GrantClaims, GrantRejected, verify_grant_token
from bastion.store import open_database
from bastion.vault import ReadPlan, RecordedPlan, open_vault

GOLDEN = Path(__file__).parent / "golden" / "v1"
# Every version folder's events: a new event type gets its frozen entry in the newest one
# (golden/v2 onward); the older folders' entries must still decode byte for byte.
EVENT_FILES = sorted(Path(__file__).parent.glob("golden/v*/events/*.json"))
V1_EVENT_TYPES = {p.stem for p in (GOLDEN / "events").glob("*.json")}
EVENT_TYPES = {
    cls.model_fields["type"].default for cls in typing.get_args(typing.get_args(events.Event)[0])
}


def test_every_event_type_has_a_golden_entry() -> None:
    # A new event type needs its golden entry (make_golden.py, in a new version folder).
    assert {p.stem for p in EVENT_FILES} == EVENT_TYPES


def test_no_event_type_is_frozen_twice() -> None:
    stems = [p.stem for p in EVENT_FILES]
    assert len(stems) == len(set(stems))


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_a_golden_entry_decodes_and_encodes_to_the_same_bytes(path: Path) -> None:
    entry = path.read_bytes()
    event = decode_event(entry)
    assert event.type == path.stem
    assert encode_event(event) == entry  # byte for byte: the leaf hash does not move


def test_a_field_a_newer_writer_added_is_ignored_when_reading() -> None:
    obj = json.loads((GOLDEN / "events" / "access.decision.json").read_bytes())
    obj["added_in_v2"] = {"anything": [1, 2]}
    obj["actor"]["badge"] = "B-7"
    event = decode_event(json.dumps(obj).encode())
    assert isinstance(event, AccessDecision) and event.actor.id == "kenji"
    # ... but Bastion itself never writes a field its model does not declare.
    with pytest.raises(ValueError):
        Actor(id="x", badge="B-7")  # type: ignore[call-arg]


def test_the_golden_grant_token_still_verifies_to_the_same_claims() -> None:
    doc = json.loads((GOLDEN / "grant.json").read_text())
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key_b64"]))
    claims = verify_grant_token(doc["token"], key)
    assert claims.to_json() == doc["claims"]
    assert claims == GrantClaims.from_json(doc["claims"])
    assert claims.issued_at == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    tampered = doc["token"][:-2] + ("AA" if not doc["token"].endswith("AA") else "BB")
    with pytest.raises(GrantRejected):
        verify_grant_token(tampered, key)


@pytest.fixture
def golden_home(tmp_path: Path) -> Home:
    """A copy: reading must not need to write to the frozen files (the test may append)."""
    root = tmp_path / "home"
    shutil.copytree(GOLDEN / "home", root)
    (root / "keys").chmod(0o700)
    for key in (root / "keys").iterdir():
        key.chmod(0o600)
    return Home.load(root)


def test_a_version_1_home_opens_and_its_log_and_vault_read(golden_home: Home) -> None:
    expected = json.loads((GOLDEN / "home-expected.json").read_text())
    clock = FixedClock(datetime(2026, 12, 2, 13, 0, tzinfo=UTC))
    db = open_database(golden_home.database_url, bounds=golden_home.settings.bounds)
    log = open_log(golden_home, db, clock, background=False)
    vault = open_vault(golden_home, db, clock)
    try:
        # The log: the same signed checkpoint, the same root from the stored entries.
        assert log.vkey == expected["vkey"]
        note = log.checkpoint_note()
        assert note.startswith(expected["checkpoint_note"].split("\n\u2014")[0])
        checkpoint = open_checkpoint(note, NoteVerifier.from_vkey(expected["vkey"]))
        assert checkpoint.size == expected["tree_size"]
        entries = [e for _, e in log.entries(0, checkpoint.size)]
        root = merkle.root_from_leaf_hashes([merkle.leaf_hash(e) for e in entries])
        assert base64.b64encode(root).decode() == expected["root_hash_b64"]
        assert checkpoint.root_hash == root
        report = log.verify_storage()
        assert report.entries_checked == checkpoint.size
        # Every entry decodes, and every event type of version 1 is in this log.
        decoded = [decode_event(e) for e in entries]
        assert {e.type for e in decoded} >= V1_EVENT_TYPES

        # The vault: sealed values written by version 1 open under the current code, on the
        # one path (recorded first).
        pairs = [(expected["records"][u], f) for u in expected["users"] for f in ("email", "name")]
        plan = ReadPlan.of("users", pairs)
        event = AccessDecision(
            actor=Actor(id="golden-test", kind="operator"),
            reason="read the frozen version-1 vault",
            at=iso(clock.now()),
            request_id="golden-1",
            action="read",
            dataset="users",
            decision="allow",
            released=[
                FieldRelease(dataset="users", record=r, field=f, transform="clear")
                for r, f in pairs
            ],
        )
        receipt = log.append(event)
        opened = vault.open(RecordedPlan.bind(plan, receipt, encode_event(event)))
        values = {(ref.record, ref.field): value for ref, value in opened.items()}
        for user, fields in expected["users"].items():
            for name, value in fields.items():
                assert values[(expected["records"][user], name)] == value
    finally:
        vault.close()
        log.close()
        db.close()
