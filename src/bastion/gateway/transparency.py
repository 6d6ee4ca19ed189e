"""Access Transparency: every access to a subject's data, found from the log itself.

The index (subject hash -> leaf index) is derived from the ledger, never written beside it: a
catch-up pass reads the entries appended since the last pass and indexes each
``access.decision``, each approval step, each ticket step (a ticket naming the subject was
opened or closed), each write and each erasure request step by the keyed subject refs it
carries. A crash can
therefore never leave an access unindexed; at worst the next pass reads a few entries again
(inserts are idempotent).

Each listed access comes with its entry and an offline C2SP tlog-proof against the published
checkpoint: the subject (or an auditor) checks it with nothing but the log's vkey.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bastion.errors import IntegrityError
from bastion.events import decode_event
from bastion.ledger.api import LedgerWriter
from bastion.ledger.tiles import TILE_WIDTH, decode_entry_bundle
from bastion.store import Database

COMPONENT = "gateway-index"
INDEX_LOCK = "gateway:subject-index"
DDL = [
    "CREATE TABLE IF NOT EXISTS gateway_subject_index ("
    " subject_hash TEXT NOT NULL,"
    " leaf_index {int} NOT NULL,"
    " PRIMARY KEY (subject_hash, leaf_index))",
    "CREATE TABLE IF NOT EXISTS gateway_index_state ("
    " id {int} PRIMARY KEY,"
    " next_index {int} NOT NULL)",
    "INSERT INTO gateway_index_state (id, next_index) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
]
_BATCH = 256
_MARKERS = (
    b'"type":"access.decision"',
    b'"type":"approval"',
    b'"type":"ticket"',
    b'"type":"data.write"',
    b'"type":"subject.erasure"',
)


def migrate_index(db: Database) -> None:
    db.migrate(COMPONENT, DDL)


@dataclass(frozen=True)
class AccessView:
    """One access, with the Access Transparency fields pulled out of its entry."""

    index: int
    event: dict[str, Any]
    entry: bytes
    proof: str | None

    def transparency(self) -> dict[str, Any]:
        ev = self.event
        actor = ev.get("actor", {})
        resources: dict[str, Any] = {"dataset": ev.get("dataset")}
        if ev.get("type") == "access.decision":
            resources["fields"] = ev.get("released_fields") or {}
            resources["records"] = len(ev.get("released_records") or [])
        else:
            resources["fields"] = ev.get("fields") or []
        approvals = list(ev.get("approval_ids") or [])
        ids = [ev.get("grant_id"), ev.get("access_request_id")]
        if ev.get("type") == "approval":
            ids.append(ev.get("request_id"))
        if ev.get("type") == "ticket":
            resources["ticket"] = ev.get("ticket")
        approvals += [str(i) for i in ids if i and str(i) not in approvals]
        return {
            "principal": actor.get("id"),
            "principal_employer": actor.get("employer"),
            "principal_office_country": actor.get("employer_country"),
            "principal_physical_location_country": actor.get("location_country"),
            "principal_job_role": actor.get("role"),
            "justification": {
                "type": ev.get("justification_type"),
                "detail": ev.get("justification_detail"),
                "purpose": ev.get("purpose"),
                "ticket": ev.get("ticket"),
            },
            "approval_ids": approvals,
            "accessed_resources": resources,
            "action": ev.get("action") or ev.get("step"),
            "decision": ev.get("decision") or ev.get("step"),
            "at": ev.get("at"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event": self.event,
            "entry": base64.b64encode(self.entry).decode(),
            "proof": self.proof,
            "access_transparency": self.transparency(),
        }


class SubjectIndex:
    """Finds the ledger entries that touch a subject, from the log's own entries."""

    def __init__(self, db: Database, log: Any, subject_ref: Any) -> None:
        """``log``: the Log (size, entry, proof_bundle, publish). ``subject_ref(raw_or_token,
        is_token)`` gives the keyed hash the pipeline writes for a subject."""
        self.db = db
        self.log = log
        self.subject_ref = subject_ref

    @property
    def writer(self) -> LedgerWriter:
        writer: LedgerWriter = self.log
        return writer

    def catch_up(self) -> int:
        """Index every entry appended since the last pass. Returns the indexed size."""
        size = int(self.log.size())
        rows = self.db.query("SELECT next_index FROM gateway_index_state WHERE id = 1")
        start = int(rows[0][0]) if rows else 0
        if start >= size:
            return start
        pairs: list[tuple[str, int]] = []
        for index, entry in self._entries(start, size):
            if any(m in entry for m in _MARKERS):
                pairs += [(ref, index) for ref in self._refs(entry)]
        with self.db.transaction(lock=INDEX_LOCK) as cur:
            self._insert(cur, pairs)
            cur.execute(
                "UPDATE gateway_index_state SET next_index = ? WHERE id = 1 AND next_index < ?",
                (size, size),
            )
        return size

    def _entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Entries start..end-1 straight from the stored bundles, 64 bundles per query."""
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        for lo in range(first, last + 1, 64):
            bundles = self.log.storage.read_bundles(lo, min(lo + 63, last))
            for bundle_index, _width, data in bundles:
                base = bundle_index * TILE_WIDTH
                for offset, entry in enumerate(decode_entry_bundle(data)):
                    index = base + offset
                    if start <= index < end:
                        yield index, entry

    @staticmethod
    def _insert(cur: Any, pairs: list[tuple[str, int]]) -> None:
        if pairs:
            cur.executemany(
                "INSERT INTO gateway_subject_index (subject_hash, leaf_index) VALUES (?, ?) "
                "ON CONFLICT (subject_hash, leaf_index) DO NOTHING",
                pairs,
            )

    def _refs(self, entry: bytes) -> set[str]:
        try:
            doc = json.loads(entry)
        except ValueError:
            raise IntegrityError("a ledger entry is not JSON") from None
        if doc.get("type") == "access.decision":
            return {str(s) for s in doc.get("subjects") or []}
        if doc.get("type") == "approval":
            # Approval steps carry the same keyed refs as access decisions.
            refs = {str(s) for s in doc.get("subject_refs") or []}
            # Entries written before refs named raw subject ids: index those under their ref.
            for subject in doc.get("subjects") or []:
                ref = self.subject_ref(str(subject))
                if ref is not None:
                    refs.add(ref)
            return refs
        if doc.get("type") == "data.write":
            return {str(r.get("subject")) for r in doc.get("records") or [] if r.get("subject")}
        if doc.get("type") == "ticket":
            return {str(s) for s in doc.get("subject_refs") or []}
        if doc.get("type") == "subject.erasure" and doc.get("subject_ref"):
            # Erasure requests (and attempts refused) show in the subject's own history. Legal
            # holds do not: a hold is the custodian's, and telling the subject may defeat it.
            return {str(doc["subject_ref"])}
        return set()

    def accesses(self, subject_hash: str, *, limit: int = 100, before: int | None = None) -> Any:
        """The newest ``limit`` entries touching the subject, with offline proofs."""
        size = self.catch_up()
        upper = size if before is None else min(before, size)
        rows = self.db.query(
            "SELECT leaf_index FROM gateway_subject_index WHERE subject_hash = ? AND leaf_index < ?"
            " ORDER BY leaf_index DESC LIMIT ?",
            (subject_hash, upper, limit),
        )
        indexes = [int(r[0]) for r in rows]
        cp = self.log.checkpoint()
        if indexes and (cp is None or cp.tree_size <= max(indexes)):
            cp = self.log.publish()  # cover the newest access with a signed checkpoint now
        views = []
        for index in indexes:
            entry = self.log.entry(index)
            views.append(
                AccessView(
                    index=index,
                    event=decode_event(entry).model_dump(mode="json", exclude_none=True),
                    entry=entry,
                    proof=self.log.proof_bundle(index),
                )
            )
        return cp, views
