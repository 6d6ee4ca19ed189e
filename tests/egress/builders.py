"""A small custodian for the recipient tests: real chunks, a real signed manifest appended to
the real witnessed log (``tests/witnessed_log.py``), a real tlog-proof, real HPKE sealing.
What the lead's runner does, reduced to the formats."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.egress.delivery import Delivery, seal_delivery
from bastion.egress.manifest import (
    build_statement,
    manifest_digest,
    manifest_event,
    new_manifest_id,
    sign_manifest,
)
from bastion.egress.payload import arrow_schema, columns_of, encode_chunks, to_table
from bastion.egress.trust import EgressTrust, build_trust_bundle
from bastion.events import SYSTEM
from bastion.ledger.anchors import log_anchors
from bastion.ledger.checkpoint import parse_checkpoint
from bastion.ledger.log import Log
from bastion.ledger.note import parse_note
from bastion.ledger.tlogproof import build_proof
from bastion.releases.dsse import Envelope

FLOW = "video-stats"
FIELDS = [("video", "string"), ("month", "date32[day]"), ("views", "int64")]
AT = "2026-12-04T12:00:00Z"


def rows(n: int, *, deletes: int = 0, start: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "_row": f"tok-{start + i:06d}",
            "_op": "upsert",
            "video": f"v{(start + i) % 7}",
            "month": datetime.date(2026, 1 + (start + i) % 12, 1),
            "views": 10 * (start + i),
        }
        for i in range(n)
    ]
    out += [
        {
            "_row": f"gone-{start + i:06d}",
            "_op": "delete",
            "video": None,
            "month": None,
            "views": None,
        }
        for i in range(deletes)
    ]
    return out


@dataclass
class Built:
    delivery: Delivery
    envelope: Envelope
    statement: dict[str, Any]
    plaintexts: list[bytes]
    index: int

    @property
    def manifest_id(self) -> str:
        return self.delivery.manifest_id

    @property
    def digest(self) -> bytes:
        return manifest_digest(self.envelope)


@dataclass
class Custodian:
    log: Log
    key: Ed25519PrivateKey
    recipient: X25519PrivateKey

    def trust(self, flows: Mapping[str, Sequence[str]] | None = None) -> EgressTrust:
        return build_trust_bundle(
            log_anchors(self.log),
            [("custodian", self.key.public_key())],
            flows or {FLOW: [name for name, _ in FIELDS]},
        )

    def statement(
        self,
        data: list[dict[str, Any]],
        *,
        flow: str = FLOW,
        run: int = 1,
        previous: str | None = None,
        fields: Sequence[tuple[str, str]] = FIELDS,
        chunk_rows: int = 2,
        manifest_id: str | None = None,
        declared: Sequence[tuple[str, str]] | None = None,
        declared_rows: int | None = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """``declared`` and ``declared_rows`` make the manifest say other columns or another
        row count than the chunks hold (a custodian bug the recipient must catch)."""
        schema = arrow_schema(fields)
        plaintexts = list(encode_chunks(to_table(data, schema), schema, chunk_rows))
        deletes = sum(1 for r in data if r["_op"] == "delete")
        statement = build_statement(
            manifest_id=manifest_id or new_manifest_id(),
            flow=flow,
            flow_version=1,
            flow_sha256="a" * 64,
            recipient="parent",
            kind="records",
            policy_sha256="b" * 64,
            run=run,
            previous_manifest=previous,
            cursor_after=0 if run == 1 else 100 * (run - 1),
            cursor_through=100 * run,
            mode="full" if run == 1 else "incremental",
            rows=len(data) - deletes if declared_rows is None else declared_rows,
            tombstones=deletes,
            schema=columns_of(schema if declared is None else arrow_schema(declared)),
            chunk_sha256=[hashlib.sha256(p).hexdigest() for p in plaintexts],
            created_at=AT,
        )
        return statement, plaintexts

    def log_manifest(self, envelope: Envelope) -> tuple[bytes, str, int]:
        """Append the egress.manifest event, publish, and prove it: (entry, proof, index)."""
        p = envelope_predicate(envelope)
        event = manifest_event(
            envelope, actor=SYSTEM, reason=f"egress run {p['run']} of {p['flow']}", at=AT
        )
        receipt = self.log.append(event)
        self.log.publish()
        note = self.log.checkpoint_note()
        size = parse_checkpoint(parse_note(note)[0]).size
        entry = self.log.entry(receipt.index)
        proof = build_proof(
            entry, receipt.index, self.log.inclusion_proof(receipt.index, size), note
        )
        return entry, proof, receipt.index

    def build(self, data: list[dict[str, Any]] | None = None, **kwargs: Any) -> Built:
        statement, plaintexts = self.statement(
            rows(5, deletes=1) if data is None else data, **kwargs
        )
        envelope = sign_manifest(statement, self.key)
        entry, proof, index = self.log_manifest(envelope)
        delivery = seal_delivery(
            envelope=envelope,
            entry=entry,
            proof=proof,
            plaintexts=plaintexts,
            recipient=self.recipient.public_key(),
        )
        return Built(delivery, envelope, statement, plaintexts, index)


def envelope_predicate(envelope: Envelope) -> dict[str, Any]:
    predicate: dict[str, Any] = json.loads(envelope.payload)["predicate"]
    return predicate


def write(root: Path, files: Sequence[tuple[str, bytes]] | Delivery) -> Path:
    """The delivery's files in ``root`` (as the files destination lays them out)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.files() if isinstance(files, Delivery) else files:
        (root / name).write_bytes(data)
    return root
