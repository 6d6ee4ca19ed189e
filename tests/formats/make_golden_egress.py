"""Write the frozen egress delivery under ``golden/v2/egress/``: run ONCE, never again.

    .venv/bin/python tests/formats/make_golden_egress.py tests/formats/golden/v2/egress

What it writes is what this version of Bastion delivers to a recipient, and
``test_golden_egress.py`` checks that the current verifier still accepts it
(``docs/FORMATS.md``: regenerating would hide the incompatibility the files exist to catch).

* ``delivery/<flow>/<manifest_id>/``: a whole delivery (signed manifest, its ledger entry, a
  tlog-proof in a checkpoint cosigned by two witnesses, three HPKE chunks, COMPLETE), laid
  out as the files destination writes it;
* ``trust.json``: the recipient's trust bundle; ``recipient.x25519.pem``: the recipient's
  private key (a test key, there only so the test can open the chunks);
* ``expected.json``: what verifying must give (the predicate, and every row).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.egress.delivery import seal_delivery
from bastion.egress.manifest import build_statement, sign_manifest
from bastion.egress.payload import (
    arrow_schema,
    columns_of,
    encode_chunks,
    private_key_to_pem,
    to_table,
)
from bastion.egress.trust import build_trust_bundle
from bastion.events import SYSTEM, Actor, EgressManifest, OperatorNote, encode_event
from bastion.ledger.anchors import LogAnchors, WitnessAnchor
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from bastion.ledger.note import NoteSigner
from bastion.ledger.tlogproof import build_proof

AT = "2026-12-04T12:00:00Z"
ORIGIN = "golden.bastion.example/log"
FLOW = "video-stats"
MANIFEST_ID = "0123456789abcdef0123456789abcdef"
FIELDS = [
    ("video", "string"),
    ("month", "date32[day]"),
    ("country", "string"),
    ("views", "int64"),
    ("watch_seconds", "double"),
]


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "_row": f"ftk_{i:04d}",
            "_op": "upsert",
            "video": f"vid-{i % 3}",
            "month": datetime.date(2026, 11 - i % 2, 1),
            "country": ["FR", "DE", "US"][i % 3],
            "views": 100 + i,
            "watch_seconds": 12.5 * i,
        }
        for i in range(5)
    ]
    rows.append({"_row": "ftk_gone", "_op": "delete", **{name: None for name, _ in FIELDS}})
    return rows


def write(out: Path) -> None:
    custodian = _key("golden custodian")
    recipient = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"golden recipient").digest())
    log = NoteSigner(ORIGIN, _key("golden log"))
    witnesses = [CosignatureSigner(f"w{i}.golden.example", _key(f"golden w{i}")) for i in range(3)]

    schema = arrow_schema(FIELDS)
    rows = _rows()
    plaintexts = list(encode_chunks(to_table(rows, schema), schema, 2))
    statement = build_statement(
        manifest_id=MANIFEST_ID,
        flow=FLOW,
        flow_version=1,
        flow_sha256=hashlib.sha256(b"the flow declaration").hexdigest(),
        recipient="parent",
        kind="records",
        policy_sha256=hashlib.sha256(b"the policies").hexdigest(),
        run=1,
        previous_manifest=None,
        cursor_after=0,
        cursor_through=42,
        mode="full",
        rows=5,
        tombstones=1,
        schema=columns_of(schema),
        chunk_sha256=[hashlib.sha256(p).hexdigest() for p in plaintexts],
        created_at=AT,
    )
    envelope = sign_manifest(statement, custodian)
    note = OperatorNote(
        actor=Actor(id="golden"), reason="a neighbour in the log", at=AT, subject="golden"
    )
    event = EgressManifest(
        actor=SYSTEM,
        reason=f"egress run 1 of {FLOW}",
        at=AT,
        flow=FLOW,
        flow_version=1,
        manifest_id=MANIFEST_ID,
        recipient="parent",
        run=1,
        rows=5,
        tombstones=1,
        chunks=len(plaintexts),
        cursor_after=0,
        cursor_through=42,
        envelope=envelope.to_json(),
    )
    entries = [encode_event(note), encode_event(event), encode_event(note)]
    leaves = [leaf_hash(e) for e in entries]

    def node(level: int, index: int) -> bytes:
        return root_from_leaf_hashes(leaves[index << level : (index + 1) << level])

    cp = Checkpoint(ORIGIN, len(leaves), root_from_leaf_hashes(leaves))
    signed = sign_checkpoint(cp, log) + "".join(
        w.cosign(cp.body(), 1_764_849_600) for w in witnesses[:2]
    )
    proof = build_proof(entries[1], 1, inclusion_proof(1, len(leaves), node), signed)
    delivery = seal_delivery(
        envelope=envelope,
        entry=entries[1],
        proof=proof,
        plaintexts=plaintexts,
        recipient=recipient.public_key(),
    )
    root = out / "delivery" / delivery.path
    root.mkdir(parents=True)
    for name, data in delivery.files():
        (root / name).write_bytes(data)
    anchors = LogAnchors(
        ORIGIN, log.vkey, tuple(WitnessAnchor(w.name, w.vkey) for w in witnesses), 2
    )
    trust = build_trust_bundle(
        anchors, [("custodian", custodian.public_key())], {FLOW: [n for n, _ in FIELDS]}
    )
    (out / "trust.json").write_text(json.dumps(trust.to_json(), indent=2, sort_keys=True) + "\n")
    (out / "recipient.x25519.pem").write_bytes(private_key_to_pem(recipient))
    expected = {
        "predicate": statement["predicate"],
        "manifest_sha256": hashlib.sha256(envelope.payload).hexdigest(),
        "log_index": 1,
        "rows": [
            {k: (v.isoformat() if isinstance(v, datetime.date) else v) for k, v in r.items()}
            for r in rows
        ],
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


def main() -> None:
    out = Path(sys.argv[1])
    if out.exists():
        sys.exit(f"{out} exists: golden files are written once and never regenerated")
    out.mkdir(parents=True)
    try:
        write(out)
    except BaseException:
        shutil.rmtree(out)
        raise


if __name__ == "__main__":
    main()
