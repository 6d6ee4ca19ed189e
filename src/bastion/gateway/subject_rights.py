"""A data subject's rights: a copy of their data (export), its erasure, and legal holds.

Each right is a Cedar decision (``PolicyEngine.can_exercise_right``, ``can_place_legal_hold``;
the permits are in ``policy/pack/70-writes-and-rights.cedar``): a subject on their own data,
cleared privacy officers of the custodian for anyone. Every attempt is recorded, refusals too.

**Export** takes the one path protected data takes out: decide, record, open. The release
is recorded as ``access.decision`` entries (action ``subject_export``, one per dataset and
chunk of records, all in one commit) that list every record and every field, and the vault
opens each chunk only through a ``RecordedPlan`` bound to its entry, as ``pipeline.Gate``
does for reads. Nothing opens if the ledger cannot record.

**Erasure** is a request that runs once its cooling-off period has passed
(``[subjects] erasure_cooling_off_seconds``) and no legal hold is in place; while a hold is,
the request stays pending (it is not refused), and it runs once the hold is released. Its
execution is ``Vault.shred`` and the ``deletion.receipt`` it returns, appended to the log;
the subject fetches the request, the receipt and its inclusion proof. Execution is
idempotent across crashes: before shredding, the request is marked ``executing`` with what
the receipt will say (``ShredPreview``); the receipt's entry is appended with a side write
that marks the request ``executed`` only if it still is ``executing``, so a second executor,
or a retry after a crash between the shred and the receipt, appends no second receipt.

While a request is pending its row keeps the raw subject id (``Vault.shred`` takes the id);
the id is cleared when the request is executed, leaving the keyed hash.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bastion.catalog import Classification, DatasetSpec, to_jsonable
from bastion.clock import iso
from bastion.errors import InputError, IntegrityError
from bastion.events import (
    SYSTEM,
    AccessDecision,
    Actor,
    DeletionReceipt,
    LegalHoldChange,
    SubjectErasure,
    decode_event,
    encode_event,
)
from bastion.gateway.errors import ApiError
from bastion.gateway.recording import receipt_out, record_entries
from bastion.gateway.runtime import Runtime
from bastion.ledger.api import Receipt
from bastion.policy import Action
from bastion.policy.engine import Decision
from bastion.policy.principal import PrincipalLike
from bastion.store import Cursor, Database
from bastion.vault import ReadPlan, RecordedPlan
from bastion.vault.plan import leaf_hash
from bastion.vault.subject_data import (
    ShredPreview,
    shred_preview,
    subject_holdings,
    was_erased,
)

log = logging.getLogger(__name__)

EXPORT_FORMAT = "bastion.subject-export"
EXPORT_VERSION = 1
# What an export entry says when the vault holds nothing about the subject.
SUBJECT_DATA = "@subject-data"
# Bytes of record keys per export entry (a subject's ref is listed once per entry).
_ENTRY_BUDGET = 40_000
COMPONENT = "gateway-subjects"
LOCK = "gateway:subjects"
DDL = [
    # One row per erasure request. ``subject_id`` is kept only while the request is open
    # (Vault.shred takes the id); ``preview`` is what the receipt will say, saved before the
    # shred; ``receipt_entry`` the deletion receipt's exact entry bytes (JSON text).
    """CREATE TABLE IF NOT EXISTS subject_erasure_requests (
        id TEXT PRIMARY KEY,
        subject_hash TEXT NOT NULL,
        subject_id TEXT,
        status TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        due_at TEXT NOT NULL,
        request_index {int} NOT NULL,
        preview TEXT,
        log_size {int},
        receipt_entry TEXT,
        receipt_index {int},
        executed_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS subject_erasure_due ON subject_erasure_requests (status, due_at)",
    "CREATE INDEX IF NOT EXISTS subject_erasure_subject ON subject_erasure_requests (subject_hash)",
    # Legal holds; ``reason`` is the typed text (the log carries its commitment by default).
    """CREATE TABLE IF NOT EXISTS subject_legal_holds (
        id TEXT PRIMARY KEY,
        subject_hash TEXT NOT NULL,
        reason TEXT NOT NULL,
        placed_by TEXT NOT NULL,
        placed_at TEXT NOT NULL,
        place_index {int} NOT NULL,
        released_by TEXT,
        released_at TEXT,
        release_reason TEXT,
        release_index {int})""",
    "CREATE INDEX IF NOT EXISTS subject_legal_holds_subject ON subject_legal_holds (subject_hash)",
]
_REQUEST_COLUMNS = (
    "id, subject_hash, subject_id, status, requested_at, due_at, request_index, preview, "
    "log_size, receipt_entry, receipt_index, executed_at"
)
_HOLD_COLUMNS = (
    "id, subject_hash, reason, placed_by, placed_at, place_index, released_by, released_at, "
    "release_reason, release_index"
)


def migrate_subjects(db: Database) -> None:
    db.migrate(COMPONENT, DDL)


class RightsRefused(Exception):
    """A refusal the caller gets as ``status``/``kind``, with the receipt of its entry."""

    def __init__(self, status: int, kind: str, message: str, receipt: Receipt | None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.receipt = receipt

    def api_error(self, request_id: str | None = None) -> ApiError:
        err = ApiError(self.status, self.kind, str(self))
        if self.receipt is not None:
            err.receipt = receipt_out(self.receipt)
        err.request_id = request_id
        return err


@dataclass(frozen=True)
class ErasureRequest:
    id: str
    subject_hash: str
    status: str  # pending | executing | executed | withdrawn
    requested_at: str
    due_at: str
    request_index: int
    receipt_entry: bytes | None
    receipt_index: int | None
    executed_at: str | None
    held: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "subject_hash": self.subject_hash,
            "status": "held" if self.status == "pending" and self.held else self.status,
            "requested_at": self.requested_at,
            "due_at": self.due_at,
            "held": self.held,
            "request_receipt": {"index": self.request_index},
            "executed_at": self.executed_at,
        }
        if self.receipt_entry is not None and self.receipt_index is not None:
            out["deletion_receipt"] = {
                "index": self.receipt_index,
                "leaf_hash": leaf_hash(self.receipt_entry).hex(),
                "event": json.loads(self.receipt_entry),
            }
        return out


@dataclass(frozen=True)
class LegalHold:
    id: str
    subject_hash: str
    reason: str
    placed_by: str
    placed_at: str
    place_index: int
    released_by: str | None
    released_at: str | None
    release_reason: str | None
    release_index: int | None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject_hash": self.subject_hash,
            "active": self.active,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at,
            "place_receipt": {"index": self.place_index},
            "released_by": self.released_by,
            "released_at": self.released_at,
            "release_reason": self.release_reason,
            "release_receipt": (
                {"index": self.release_index} if self.release_index is not None else None
            ),
        }


@dataclass(frozen=True)
class SubjectExport:
    document: dict[str, Any]
    receipt: Receipt
    records: int


def _request(row: Sequence[Any], held: bool = False) -> ErasureRequest:
    entry = row[9]
    return ErasureRequest(
        id=str(row[0]),
        subject_hash=str(row[1]),
        status=str(row[3]),
        requested_at=str(row[4]),
        due_at=str(row[5]),
        request_index=int(row[6]),
        receipt_entry=str(entry).encode() if entry is not None else None,
        receipt_index=int(row[10]) if row[10] is not None else None,
        executed_at=str(row[11]) if row[11] is not None else None,
        held=held,
    )


def _hold(row: Sequence[Any]) -> LegalHold:
    return LegalHold(
        id=str(row[0]),
        subject_hash=str(row[1]),
        reason=str(row[2]),
        placed_by=str(row[3]),
        placed_at=str(row[4]),
        place_index=int(row[5]),
        released_by=row[6],
        released_at=row[7],
        release_reason=row[8],
        release_index=int(row[9]) if row[9] is not None else None,
    )


class SubjectRights:
    """Export, erasure requests and legal holds over one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.home.settings.subjects
        migrate_subjects(rt.db)
        # One executor at a time in this process; across processes the side write decides.
        self._executing = threading.Lock()

    # ---- recording ---------------------------------------------------------------------

    def _append(self, event: Any, side_write: Any = None) -> tuple[Receipt, bytes]:
        """Append one event (with a side write that commits with it); a ledger that cannot
        record is a 503 and nothing happens."""
        entry = encode_event(event)
        try:
            (receipt,) = self.rt.writer.append_entries([entry], side_write=side_write)
        except (RightsRefused, InputError):
            raise
        except Exception as exc:
            self.rt.metrics.ledger_failures.inc()
            log.error("ledger append failed: %s", type(exc).__name__)
            raise ApiError(
                503, "ledger-unavailable", "the ledger could not record this request"
            ) from None
        return receipt, entry

    def _actor(self, principal: PrincipalLike) -> Actor:
        """How the public log names the caller: the gateway's principals say it themselves
        (a subject under their keyed ref); a principal the CLI describes is named from its
        attributes, and a subject again never under their raw id."""
        method = getattr(principal, "actor", None)
        if callable(method):
            actor = method()
            if isinstance(actor, Actor):
                return actor
        attrs = self.rt.engine().attributes(principal)
        actor = attrs.actor()
        if attrs.role == "subject":
            (ref,) = self.rt.lookup.subject_refs([attrs.subject_id or principal.id])
            actor = actor.model_copy(update={"id": ref})
        return actor

    def _hash(self, subject_id: str) -> str:
        return self.rt.vault.subject_hash(subject_id)

    # ---- export ------------------------------------------------------------------------

    def export(self, principal: PrincipalLike, subject_id: str, request_id: str) -> SubjectExport:
        """Every record about the subject, every field in clear, recorded before it opens."""
        rt = self.rt
        decision = rt.engine().can_exercise_right(principal, Action.SUBJECT_EXPORT, subject_id)
        (attempted,) = rt.lookup.subject_refs([subject_id])
        at = iso(rt.clock.now())
        header: dict[str, Any] = {
            "actor": self._actor(principal),
            "at": at,
            "request_id": request_id,
            "action": Action.SUBJECT_EXPORT.value,
            "policies": list(decision.policy_ids),
            "policy_sha256": rt.engine().sha256,
            "subjects": [attempted],
        }
        if not decision.allowed:
            event = AccessDecision(
                **header,
                reason="subject data export refused",
                dataset=SUBJECT_DATA,
                decision="deny",
                denied_reason=decision.reason[:1024],
            )
            (receipt,) = [r for r, _ in record_entries(rt, [event])]
            rt.metrics.decisions.labels(Action.SUBJECT_EXPORT.value, "deny").inc()
            raise RightsRefused(
                403, "denied", "only the subject and privacy officers may export this", receipt
            )
        holdings = subject_holdings(rt.vault, subject_id)
        plans: list[tuple[DatasetSpec, list[str]]] = []
        for dataset, keys in holdings.records.items():
            spec = rt.catalog.dataset(dataset)
            plans += [(spec, chunk) for chunk in _chunks(keys)]
        events = [
            AccessDecision(
                **header,
                reason="subject data export (GDPR art. 15 and 20)",
                dataset=spec.name,
                decision="allow",
                released_fields={f: "clear" for f in spec.field_names},
                released_records=list(chunk),
            )
            for spec, chunk in plans
        ] or [
            AccessDecision(
                **header,
                reason="subject data export (GDPR art. 15 and 20)",
                dataset=SUBJECT_DATA,
                decision="allow",
            )
        ]
        # Recorded BEFORE anything opens, all in one commit.
        entries = record_entries(rt, events)
        rt.metrics.decisions.labels(Action.SUBJECT_EXPORT.value, "allow").inc()
        datasets: dict[str, dict[str, Any]] = {}
        for (spec, chunk), entry in zip(plans, entries, strict=False):
            out = datasets.setdefault(
                spec.name,
                {"record_id_field": spec.record_id, "subject_key": spec.subject_key, "records": []},
            )
            out["records"] += self._open(spec, chunk, entry)
        receipt = entries[0][0]
        document = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "subject": subject_id,
            "subject_ref": attempted,
            "generated_at": at,
            "request_id": request_id,
            "log_origin": rt.ledger.origin,
            "receipt": receipt_out(receipt).model_dump(),
            "receipts": [receipt_out(r).model_dump() for r, _ in entries],
            "proof": {
                "kind": "c2sp-tlog-proof",
                "how": "GET /subjects/{id}/accesses lists this entry with its proof",
            },
            "records": holdings.count,
            "datasets": datasets,
        }
        return SubjectExport(document, receipt, holdings.count)

    def _open(
        self, spec: DatasetSpec, chunk: Sequence[str], entry: tuple[Receipt, bytes]
    ) -> list[dict[str, Any]]:
        """One chunk's values: sealed ones through a plan bound to its entry, public ones
        from the clear column (the same two sides ``pipeline.Gate.open`` reads)."""
        vault = self.rt.vault
        public = [f.name for f in spec.fields if f.classification is Classification.PUBLIC]
        sealed = [f.name for f in spec.fields if f.classification is not Classification.PUBLIC]
        values: dict[str, dict[str, Any]] = {k: {} for k in chunk}
        if sealed:
            plan = ReadPlan.of(spec.name, ((k, f) for k in chunk for f in sealed))
            try:
                bound = RecordedPlan.bind(plan, *entry)
            except InputError:
                log.error("an export's plan did not match its ledger entry; nothing opened")
                raise IntegrityError("the ledger entry does not list every value to open") from None
            for record, fields in vault.open(bound).by_record().items():
                values[record].update({f: to_jsonable(v) for f, v in fields.items()})
        if public:
            clear = vault.clear_values(spec.name, list(chunk), public)
            for record, shown in clear.items():
                values[record].update(shown)
        order = spec.field_names
        return [
            {
                "record_id": values[k].get(spec.record_id),
                "values": {f: values[k].get(f) for f in order},
            }
            for k in chunk
        ]

    # ---- legal holds -------------------------------------------------------------------

    def _hold_decision(self, principal: PrincipalLike, step: str, **ids: Any) -> Decision:
        decision = self.rt.engine().can_place_legal_hold(principal)
        if not decision.allowed:
            receipt, _ = self._append(
                LegalHoldChange(
                    actor=self._actor(principal),
                    reason=f"legal hold {step} refused",
                    at=iso(self.rt.clock.now()),
                    step="refused",
                    policies=list(decision.policy_ids),
                    denied_reason=decision.reason[:1024],
                    **ids,
                )
            )
            raise RightsRefused(
                403, "denied", "only cleared privacy officers may manage legal holds", receipt
            )
        return decision

    def place_hold(self, principal: PrincipalLike, subject_id: str, reason: str) -> LegalHold:
        subject_hash = self._hash(subject_id)
        decision = self._hold_decision(principal, "placement", subject_hash=subject_hash)
        _reason(reason)
        hold_id = secrets.token_hex(16)
        actor = self._actor(principal)
        at = iso(self.rt.clock.now())

        def insert(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO subject_legal_holds (id, subject_hash, reason, placed_by, "
                "placed_at, place_index) VALUES (?, ?, ?, ?, ?, -1)",
                (hold_id, subject_hash, reason, actor.id, at),
            )

        receipt, _ = self._append(
            LegalHoldChange(
                actor=actor,
                reason=self.rt.public_text.publish(reason)[:4096],
                at=at,
                step="placed",
                hold_id=hold_id,
                subject_hash=subject_hash,
                policies=list(decision.policy_ids),
            ),
            insert,
        )
        self._set_index("subject_legal_holds", "place_index", hold_id, receipt.index)
        return self._get_hold(hold_id)

    def release_hold(self, principal: PrincipalLike, hold_id: str, reason: str) -> LegalHold:
        decision = self._hold_decision(principal, "release", hold_id=hold_id[:64])
        _reason(reason)
        hold = self._find_hold(hold_id)
        if hold is None:
            raise RightsRefused(404, "unknown-hold", "no such legal hold", None)
        if not hold.active:
            raise RightsRefused(409, "not-active", "this legal hold was already released", None)
        actor = self._actor(principal)
        at = iso(self.rt.clock.now())

        def release(cur: Cursor) -> None:
            done = cur.execute(
                "UPDATE subject_legal_holds SET released_by = ?, released_at = ?, "
                "release_reason = ?, release_index = -1 WHERE id = ? AND released_at IS NULL",
                (actor.id, at, reason, hold_id),
            ).rowcount
            if done != 1:
                raise RightsRefused(409, "not-active", "this legal hold was already released", None)

        receipt, _ = self._append(
            LegalHoldChange(
                actor=actor,
                reason=self.rt.public_text.publish(reason)[:4096],
                at=at,
                step="released",
                hold_id=hold_id,
                subject_hash=hold.subject_hash,
                policies=list(decision.policy_ids),
            ),
            release,
        )
        self._set_index("subject_legal_holds", "release_index", hold_id, receipt.index)
        # Erasures the hold kept back may run now.
        self.process_due(subject_hash=hold.subject_hash)
        return self._get_hold(hold_id)

    def list_holds(
        self, principal: PrincipalLike, subject_id: str | None = None, *, active_only: bool = True
    ) -> tuple[list[LegalHold], Receipt]:
        subject_hash = self._hash(subject_id) if subject_id is not None else None
        decision = self._hold_decision(principal, "listing", subject_hash=subject_hash)
        sql = f"SELECT {_HOLD_COLUMNS} FROM subject_legal_holds"
        where, params = [], []
        if subject_hash is not None:
            where.append("subject_hash = ?")
            params.append(subject_hash)
        if active_only:
            where.append("released_at IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        holds = [_hold(r) for r in self.rt.db.query(sql + " ORDER BY placed_at, id", params)]
        receipt, _ = self._append(
            LegalHoldChange(
                actor=self._actor(principal),
                reason="legal holds listed",
                at=iso(self.rt.clock.now()),
                step="listed",
                subject_hash=subject_hash,
                holds=len(holds),
                policies=list(decision.policy_ids),
            )
        )
        return holds, receipt

    def _find_hold(self, hold_id: str) -> LegalHold | None:
        rows = self.rt.db.query(
            f"SELECT {_HOLD_COLUMNS} FROM subject_legal_holds WHERE id = ?", (hold_id,)
        )
        return _hold(rows[0]) if rows else None

    def _get_hold(self, hold_id: str) -> LegalHold:
        hold = self._find_hold(hold_id)
        if hold is None:
            raise IntegrityError("a legal hold recorded in the log is missing from the database")
        return hold

    def held(self, subject_hash: str) -> bool:
        rows = self.rt.db.query(
            "SELECT 1 FROM subject_legal_holds WHERE subject_hash = ? AND released_at IS NULL",
            (subject_hash,),
        )
        return bool(rows)

    def _set_index(self, table: str, column: str, row_id: str, index: int) -> None:
        # The entry's index is known only once the commit returns; the row was written in it.
        with self.rt.db.transaction(lock=LOCK) as cur:
            cur.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (index, row_id))

    # ---- erasure -----------------------------------------------------------------------

    def request_erasure(
        self, principal: PrincipalLike, subject_id: str
    ) -> tuple[ErasureRequest, bool]:
        """Open an erasure request (or return the one already open): (request, created).
        Executed at once when there is no cooling-off period and no legal hold."""
        rt = self.rt
        decision = rt.engine().can_exercise_right(principal, Action.REQUEST_ERASURE, subject_id)
        subject_hash = self._hash(subject_id)
        actor = self._actor(principal)
        now = rt.clock.now()
        request_id = secrets.token_hex(16)
        ref = rt.subject_ref_for_id(subject_id)
        if not decision.allowed:
            receipt, _ = self._append(
                SubjectErasure(
                    actor=actor,
                    reason="erasure request refused",
                    at=iso(now),
                    request_id=request_id,
                    subject_hash=subject_hash,
                    subject_ref=ref,
                    step="refused",
                    policies=list(decision.policy_ids),
                    denied_reason=decision.reason[:1024],
                )
            )
            raise RightsRefused(
                403, "denied", "only the subject and privacy officers may ask for this", receipt
            )
        existing = self._open_request(subject_hash)
        if existing is not None:
            return existing, False
        if rt.vault.pseudonym_of(subject_id) is None:
            gone = was_erased(rt.vault, subject_id)
            receipt, _ = self._append(
                SubjectErasure(
                    actor=actor,
                    reason="already erased" if gone else "no data held about the subject",
                    at=iso(now),
                    request_id=request_id,
                    subject_hash=subject_hash,
                    step="refused",
                    policies=list(decision.policy_ids),
                    denied_reason="already erased" if gone else "no such subject",
                )
            )
            if gone:
                raise RightsRefused(410, "erased", "this subject was already erased", receipt)
            raise RightsRefused(
                404, "unknown-subject", "the vault holds nothing about this subject", receipt
            )
        due = iso(now + timedelta(seconds=self.settings.erasure_cooling_off_seconds))
        held = self.held(subject_hash)
        at = iso(now)

        def insert(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO subject_erasure_requests (id, subject_hash, subject_id, status, "
                "requested_at, due_at, request_index) VALUES (?, ?, ?, 'pending', ?, ?, -1)",
                (request_id, subject_hash, subject_id, at, due),
            )

        receipt, _ = self._append(
            SubjectErasure(
                actor=actor,
                reason="erasure request (GDPR art. 17)",
                at=at,
                request_id=request_id,
                subject_hash=subject_hash,
                subject_ref=ref,
                step="requested",
                due_at=due,
                held=held or None,
                policies=list(decision.policy_ids),
            ),
            insert,
        )
        self._set_index("subject_erasure_requests", "request_index", request_id, receipt.index)
        if not held and due <= at:
            self.process_due(subject_hash=subject_hash)
        return self.get_request(request_id), True

    def erasure_status(
        self, principal: PrincipalLike, subject_id: str, request_id: str
    ) -> ErasureRequest:
        """A request of this subject's, to the subject and to privacy officers."""
        decision = self.rt.engine().can_exercise_right(
            principal, Action.REQUEST_ERASURE, subject_id
        )
        if not decision.allowed:
            raise RightsRefused(
                403, "denied", "only the subject and privacy officers may see this", None
            )
        found = self._find_request(request_id)
        if found is None or found.subject_hash != self._hash(subject_id):
            raise RightsRefused(404, "unknown-request", "no such erasure request", None)
        return found

    def withdraw_erasure(
        self, principal: PrincipalLike, subject_id: str, request_id: str
    ) -> ErasureRequest:
        """Take back a pending erasure request during its cooling-off (or while a legal hold
        keeps it waiting). Recorded as step ``withdrawn``; the raw subject id the request kept
        for its execution is cleared in the same commit. Once it executes, nothing undoes it."""
        found = self.erasure_status(principal, subject_id, request_id)
        if found.status != "pending":
            raise RightsRefused(
                409,
                "not-pending",
                f"the request is {found.status}: it can no longer be withdrawn",
                None,
            )
        actor = self._actor(principal)

        def withdraw(cur: Cursor) -> None:
            moved = cur.execute(
                "UPDATE subject_erasure_requests SET status = 'withdrawn', subject_id = '' "
                "WHERE id = ? AND status = 'pending'",
                (request_id,),
            ).rowcount
            if moved != 1:
                raise RightsRefused(409, "not-pending", "the request started executing", None)

        with self._executing:  # never while the executor runs this very request
            self._append(
                SubjectErasure(
                    actor=actor,
                    reason="erasure request withdrawn",
                    at=iso(self.rt.clock.now()),
                    request_id=request_id,
                    subject_hash=found.subject_hash,
                    subject_ref=self.rt.subject_ref_for_id(subject_id),
                    step="withdrawn",
                ),
                withdraw,
            )
        return self.get_request(request_id)

    def _open_request(self, subject_hash: str) -> ErasureRequest | None:
        rows = self.rt.db.query(
            f"SELECT {_REQUEST_COLUMNS} FROM subject_erasure_requests WHERE subject_hash = ? "
            "AND status NOT IN ('executed', 'withdrawn') ORDER BY requested_at LIMIT 1",
            (subject_hash,),
        )
        return _request(rows[0], self.held(subject_hash)) if rows else None

    def _find_request(self, request_id: str) -> ErasureRequest | None:
        rows = self.rt.db.query(
            f"SELECT {_REQUEST_COLUMNS} FROM subject_erasure_requests WHERE id = ?", (request_id,)
        )
        return _request(rows[0], self.held(str(rows[0][1]))) if rows else None

    def get_request(self, request_id: str) -> ErasureRequest:
        found = self._find_request(request_id)
        if found is None:
            raise IntegrityError("an erasure request recorded in the log is missing")
        return found

    def proof(self, index: int) -> tuple[str, str]:
        """(signed checkpoint, C2SP tlog-proof) for an entry, publishing a checkpoint that
        covers it if the newest does not."""
        ledger = self.rt.ledger
        cp = ledger.checkpoint()
        if cp is None or cp.tree_size <= index:
            cp = ledger.publish()
        return str(cp.text), str(ledger.proof_bundle(index))

    # ---- execution ---------------------------------------------------------------------

    def process_due(self, *, subject_hash: str | None = None) -> list[ErasureRequest]:
        """Execute every request that is due and not held; finish any an interruption left
        half done. Returns the requests executed (or finished) now."""
        now = iso(self.rt.clock.now())
        sql = (
            f"SELECT {_REQUEST_COLUMNS} FROM subject_erasure_requests WHERE "
            "((status = 'pending' AND due_at <= ?) OR status = 'executing' "
            "OR (status = 'executed' AND receipt_index IS NULL))"
        )
        params: list[Any] = [now]
        if subject_hash is not None:
            sql += " AND subject_hash = ?"
            params.append(subject_hash)
        done: list[ErasureRequest] = []
        with self._executing:
            for row in self.rt.db.query(sql + " ORDER BY due_at, id", params):
                status, rid = str(row[3]), str(row[0])
                if status == "pending" and self.held(str(row[1])):
                    continue  # a legal hold keeps it pending until released
                try:
                    self._execute(row)
                except Exception as exc:  # the next round retries; others still run
                    log.error("erasure request failed: %s", type(exc).__name__)
                    continue
                done.append(self.get_request(rid))
        return done

    def _execute(self, row: Sequence[Any]) -> None:
        rt, vault = self.rt, self.rt.vault
        rid, subject_hash, subject_id, status = str(row[0]), str(row[1]), row[2], str(row[3])
        if status == "executed":
            self._find_receipt_index(rid, int(row[8]), str(row[9]).encode())
            return
        if subject_id is None:
            raise IntegrityError("an open erasure request lost its subject")
        if status == "pending":
            # Claim it, and save what the receipt will say before anything is destroyed.
            preview = shred_preview(vault, subject_id)
            log_size = rt.ledger.size()  # the receipt, if any, is appended after this
            with rt.db.transaction(lock=LOCK) as cur:
                claimed = cur.execute(
                    "UPDATE subject_erasure_requests SET status = 'executing', preview = ?, "
                    "log_size = ? WHERE id = ? AND status = 'pending'",
                    (preview.to_json() if preview else None, log_size, rid),
                ).rowcount
            if claimed != 1:
                return  # another executor has it
            preview_text = preview.to_json() if preview else None
        else:
            preview_text = row[7]
        reason = f"erasure request {rid}"
        if not was_erased(vault, subject_id):
            receipt_event = vault.shred(subject_id, SYSTEM, reason)
        else:
            # Shredded before an interruption (or by an operator): the receipt from what was
            # saved before the shred.
            saved = ShredPreview.from_json(preview_text) if preview_text else None
            receipt_event = DeletionReceipt(
                actor=SYSTEM,
                reason=reason,
                at=iso(rt.clock.now()),
                subject_hash=subject_hash,
                key_id=saved.key_id if saved else "subject-dek:destroyed-earlier",
                records_affected=saved.records if saved else 0,
                pseudonyms_removed=saved.pseudonyms if saved else 0,
            )
        entry = encode_event(receipt_event)
        at = iso(rt.clock.now())

        def executed(cur: Cursor) -> None:
            marked = cur.execute(
                "UPDATE subject_erasure_requests SET status = 'executed', subject_id = NULL, "
                "receipt_entry = ?, executed_at = ? WHERE id = ? AND status = 'executing'",
                (entry.decode(), at, rid),
            ).rowcount
            if marked != 1:
                raise _AlreadyExecuted

        try:
            (receipt,) = rt.writer.append_entries([entry], side_write=executed)
        except _AlreadyExecuted:
            return  # another executor appended the receipt
        self._set_index("subject_erasure_requests", "receipt_index", rid, receipt.index)

    def _find_receipt_index(self, rid: str, log_size: int, entry: bytes) -> None:
        """An executed request without its receipt's index: the commit happened but the
        index was not saved (or, with the files log driver, the entry never followed its
        side write). Find the entry from where execution began; append it if absent."""
        ledger = self.rt.ledger
        target = leaf_hash(entry)
        for index, found in ledger.entries(log_size, ledger.size()):
            if leaf_hash(found) == target:
                self._set_index("subject_erasure_requests", "receipt_index", rid, index)
                return
        (receipt,) = self.rt.writer.append_entries([entry])
        self._set_index("subject_erasure_requests", "receipt_index", rid, receipt.index)


class _AlreadyExecuted(Exception):
    pass


def _reason(reason: str) -> None:
    if not reason.strip() or len(reason) > 2000:
        raise InputError("a reason is required (at most 2000 characters)", field="reason")


def _chunks(keys: Sequence[str]) -> list[list[str]]:
    """Records split so each export entry stays well under the log's 64 KiB."""
    out: list[list[str]] = [[]]
    size = 0
    for key in keys:
        cost = len(key) + 3
        if out[-1] and size + cost > _ENTRY_BUDGET:
            out.append([])
            size = 0
        out[-1].append(key)
        size += cost
    return out


def decoded_receipt(request: ErasureRequest) -> DeletionReceipt | None:
    if request.receipt_entry is None:
        return None
    event = decode_event(request.receipt_entry)
    return event if isinstance(event, DeletionReceipt) else None
