"""Write the frozen format files under ``golden/v1/``: run ONCE per format version, never again.

    .venv/bin/python tests/formats/make_golden.py tests/formats/golden/v1

What it writes is what this version of Bastion wrote, and ``test_golden_formats.py`` checks
that the current code still reads it. Regenerating the files would hide exactly the
incompatibility they exist to catch; a new format version gets a new folder (``v2``) and the
old one stays. ``docs/FORMATS.md`` is the compatibility policy.

* ``events/<type>.json``: one ledger entry of every event type, as encoded (RFC 8785 bytes).
* ``grant.json``: a ``bgrant1`` grant token, the key that signed it, and its claims.
* ``home/``: a whole embedded home (config, local keyring, SQLite database) holding sealed
  records of three users and a log of every event type, with its checkpoint;
  ``home-expected.json`` says what reading it must give.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock, iso
from bastion.demo.platform import initialize_all, sample_user
from bastion.events import (
    AccessDecision,
    Actor,
    AnalyticsBudgetChange,
    AnalyticsQuery,
    Approval,
    AuthFailure,
    DataIngest,
    DeletionReceipt,
    Export,
    FieldRelease,
    KeyRotation,
    OperatorNote,
    PolicyChange,
    ReleaseApproval,
    RequestRejected,
    TicketChange,
    encode_event,
)
from bastion.home import Home
from bastion.ledger.log import open_log
from bastion.policy.grants import GrantClaims, key_id, sign_grant
from bastion.store import open_database
from bastion.vault import open_vault

AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ENGINEER = Actor(
    id="kenji",
    kind="principal",
    employer="globalco",
    employer_country="SG",
    location_country="SG",
    role="engineer",
)
OPS = Actor(id="ops@custodian.example", kind="operator", role="vault-operator")
H = "ab" * 32  # a SHA-256 in hex


def sample_events() -> list[AccessDecision | object]:
    at = iso(AT)
    release = FieldRelease(dataset="users", record="rk-1", field="email", transform="mask")
    return [
        AccessDecision(
            actor=ENGINEER,
            reason="policy permit engineers-abroad-pseudonyms",
            at=at,
            request_id="0f8e7d6c5b4a39281706f5e4d3c2b1a0",
            action="read",
            dataset="users",
            decision="allow",
            policies=["engineers-abroad-pseudonyms"],
            purpose="debugging",
            justification_type="production_alert",
            ticket="INC-42",
            released=[release],
            policy_sha256=H,
        ),
        Export(
            actor=OPS,
            reason="monthly report",
            at=at,
            dataset="videos",
            destination="s3://x",
            records=10,
            fields=["video_id"],
        ),
        DataIngest(
            actor=OPS,
            reason="ingest users",
            at=at,
            dataset="users",
            source="users.jsonl",
            records=3,
            sealed_values=21,
            source_sha256=H,
        ),
        DeletionReceipt(
            actor=OPS,
            reason="erasure request",
            at=at,
            subject_hash=H,
            key_id="dk-1",
            records_affected=2,
            pseudonyms_removed=1,
        ),
        KeyRotation(
            actor=OPS,
            reason="scheduled",
            at=at,
            provider="local",
            old_version=1,
            new_version=2,
            rewrapped=3,
        ),
        PolicyChange(
            actor=OPS,
            reason="install pack",
            at=at,
            policy_sha256=H,
            policies=["a", "b"],
        ),
        Approval(
            actor=ENGINEER,
            reason="needs location",
            at=at,
            request_id="ar-1",
            step="requested",
            dataset="users",
            action="read",
            fields=["location"],
            approvers_required=2,
            max_uses=1,
        ),
        TicketChange(
            actor=OPS,
            reason="opened by the ticketing service",
            at=at,
            ticket="SUP-1",
            step="opened",
            assignees=["alice"],
        ),
        ReleaseApproval(
            actor=OPS,
            reason="release approved",
            at=at,
            artifact_sha256=H,
            app="tiktok",
            channel="us-prod",
            vsa_envelope_sha256=H,
        ),
        AnalyticsQuery(
            actor=Actor(id="adco-analyst", kind="principal", employer="adco"),
            reason="campaign reach",
            at=at,
            analyst="adco-analyst",
            organization="adco",
            template="count",
            parameters={"group_by": ["region"]},
            epsilon_spent=0.5,
            keys_released=4,
            delta_spent=1e-7,
        ),
        AnalyticsBudgetChange(
            actor=OPS,
            reason="quarterly budget",
            at=at,
            scope="organization",
            principal="adco",
            action="set",
            epsilon_limit=10.0,
            delta_limit=1e-5,
        ),
        OperatorNote(
            actor=OPS,
            reason="data centre wipe certificate",
            at=at,
            subject="dc-7",
            detail={"certificate": "WC-2026-001"},
        ),
        AuthFailure(
            actor=Actor(id="anonymous", kind="principal"),
            reason="bad token",
            at=at,
            endpoint="POST /datasets/{dataset}/read",
            failure="expired",
        ),
        RequestRejected(
            actor=ENGINEER,
            reason="bad request",
            at=at,
            request_id="r-1",
            endpoint="POST /datasets/{dataset}/read",
            status=422,
            error="invalid-input",
            dataset="users",
            field="fields",
        ),
    ]


def write_events(out: Path) -> None:
    folder = out / "events"
    folder.mkdir(parents=True)
    for event in sample_events():
        entry = encode_event(event)  # type: ignore[arg-type]
        (folder / f"{event.type}.json").write_bytes(entry)  # type: ignore[attr-defined]


def write_grant(out: Path) -> None:
    key = Ed25519PrivateKey.generate()
    claims = GrantClaims(
        grant_id="g-0001",
        kind="approval",
        request_id="ar-1",
        request_sha256=H,
        principal="kenji",
        dataset="users",
        action="read",
        fields=("location",),
        subjects=("u00001",),
        justification="production_alert",
        approvers=("alice", "bob"),
        issued_at=AT,
        expires_at=AT + timedelta(hours=1),
        key_id=key_id(key.public_key()),
        max_uses=1,
    )
    token = sign_grant(claims, key)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = {
        "token": token,
        "public_key_b64": base64.b64encode(public).decode(),
        "claims": claims.to_json(),
    }
    (out / "grant.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_home(out: Path) -> None:
    clock = FixedClock(AT)
    root = out / "home"
    init_home(root, origin="golden.bastion.example/log")
    home = Home.load(root)
    db = open_database(home.database_url, bounds=home.settings.bounds)
    initialize_all(home, db, clock)
    vault = open_vault(home, db, clock)
    users = [sample_user(n) for n in (1, 2, 3)]
    vault.ingest_rows("users", enumerate(users, 1), source="golden")
    log = open_log(home, db, clock, background=False)
    for event in sample_events():
        log.append(event)  # type: ignore[arg-type]
    checkpoint = log.publish()
    records = {u["user_id"]: vault.subject_records(u["user_id"], "users")[0].record for u in users}
    expected = {
        "tree_size": checkpoint.tree_size,
        "root_hash_b64": base64.b64encode(checkpoint.root_hash).decode(),
        "vkey": log.vkey,
        "checkpoint_note": checkpoint.note,
        "users": {u["user_id"]: {"email": u["email"], "name": u["name"]} for u in users},
        "records": records,  # user id -> its record key
    }
    log.close()
    vault.close()
    db.close()
    with sqlite3.connect(home.sqlite_path) as con:  # one self-contained, compact file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    con = sqlite3.connect(home.sqlite_path)
    con.execute("VACUUM")
    con.close()
    for extra in root.glob("bastion.db-*"):
        extra.unlink()
    (out / "home-expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


def main() -> None:
    out = Path(sys.argv[1])
    if out.exists():
        sys.exit(f"{out} exists: golden files are written once and never regenerated")
    out.mkdir(parents=True)
    try:
        write_events(out)
        write_grant(out)
        write_home(out)
    except BaseException:
        shutil.rmtree(out)
        raise


if __name__ == "__main__":
    main()
