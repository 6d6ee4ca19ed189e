"""Writes to live records: insert, upsert, change and delete, with versions.

A write runs in two phases so that its ledger entry and its data commit together:

1. :meth:`VaultWrites.stage` (outside the ledger's commit): validate every value with the
   catalog's compiled validator, give new subjects their pseudonyms and data keys (in a
   vault transaction of its own, as ingest does), refuse erased subjects, and seal the
   values with the one sealing path ingest uses (``DatasetLayout.seal``). Nothing of the
   record is stored yet, and the staged write holds only ciphertext and tokens.
2. :meth:`VaultWrites.apply` (inside the ledger's commit, as its side write, under the
   vault lock): re-check that every subject still holds its data key (410 otherwise), check
   versions (412 on a stale If-Match, 409 on a duplicate insert, 404 on a missing record),
   store the rows and append their change-feed rows. If it raises, the ledger drops the
   write's entry with it, so no acknowledged write lacks its entry and no entry names a
   write that did not happen.

A change (``update``) seals only the fields it names; the record's other sealed values are
kept as they are (each value is sealed on its own, bound to dataset, record, subject and
field, so a value moves between blobs of the same record unchanged).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bastion.catalog import DatasetSpec, Value
from bastion.catalog.compiled import ValidBatch, compile_field, row_validator
from bastion.catalog.values import BadValue
from bastion.clock import iso
from bastion.errors import InputError
from bastion.store import Cursor, Database, DuplicateKey
from bastion.vault import codec
from bastion.vault.changes import ChangeOp, change_row, record_changes
from bastion.vault.schema import VAULT_LOCK, select_in
from bastion.vault.sealing import RECORD_COLUMNS, DatasetLayout
from bastion.vault.subject_keys import FieldKey
from bastion.vault.vault import Vault


class WriteOp(StrEnum):
    INSERT = "insert"  # a new record; 409 if its id is taken
    UPSERT = "upsert"  # a new record, or a whole new version of an existing one
    UPDATE = "update"  # some fields of an existing record
    DELETE = "delete"  # an existing record


class WriteRefused(InputError):
    """A write the vault refuses for what is stored (not for its shape): carries the HTTP
    status that says why (404 missing, 409 duplicate, 410 erased subject, 412 stale)."""

    def __init__(self, status: int, reason: str, **where: object) -> None:
        super().__init__(reason, **where)  # type: ignore[arg-type]
        self.status = status


@dataclass(frozen=True)
class StagedRecord:
    record_id: str  # as the caller named it
    record_key: str  # as the vault stores it (the id's pseudonym where it is pseudonymized)
    subject: str  # the subject's token
    fields: tuple[str, ...]  # the fields this write sets
    clear: Mapping[str, object] | None  # clear values (public values and tokens) it sets
    sealed: Mapping[str, bytes] | None  # field -> nonce||ciphertext||tag it sets
    expected_version: int | None
    tokens: Mapping[str, object]  # pseudonymized field -> its token(s), for the response
    # What the write sets, as stored: clear JSON text and sealed blob (None for a delete).
    # A whole-row write (insert, upsert) stores these as they are, so the rows sealing
    # made are not decoded and encoded again inside the ledger's commit.
    stored: tuple[str, bytes] | None = None


@dataclass(frozen=True)
class StagedWrite:
    dataset: str
    op: WriteOp
    records: tuple[StagedRecord, ...]
    commitment: str  # keyed hash over the staged content (what the ledger entry carries)
    created_secrets: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class WrittenRecord:
    record_id: str
    record_key: str
    subject: str
    version: int
    created: bool


def _row_where(dataset: str, row: int, field_name: str | None = None) -> dict[str, object]:
    return {"dataset": dataset, "row": row, "field": field_name}


class VaultWrites:
    """The write path of one vault."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    # ---- phase 1: validate, resolve, seal ---------------------------------------------------

    def stage(
        self,
        dataset: str,
        op: WriteOp,
        records: Sequence[Mapping[str, object]],
        *,
        record_id: str | None = None,
        expected_version: int | None = None,
    ) -> StagedWrite:
        """Validate and seal a write. ``records``: whole rows for insert and upsert, the
        changed fields for update (one), nothing for delete (``record_id`` names it)."""
        spec = self.vault.catalog.dataset(dataset)
        if op in (WriteOp.INSERT, WriteOp.UPSERT):
            staged = self._stage_rows(spec, op, records)
        elif op is WriteOp.UPDATE:
            if record_id is None or len(records) != 1:
                raise InputError("a change names one record and its fields", dataset=dataset)
            staged = [self._stage_change(spec, record_id, records[0], expected_version)]
        else:
            if record_id is None:
                raise InputError("a delete names its record", dataset=dataset)
            staged = [self._stage_delete(spec, record_id, expected_version)]
        return StagedWrite(
            dataset=spec.name,
            op=op,
            records=tuple(staged),
            commitment=self._commitment(spec.name, op, staged),
        )

    def _stage_rows(
        self, spec: DatasetSpec, op: WriteOp, records: Sequence[Mapping[str, object]]
    ) -> list[StagedRecord]:
        validator = row_validator(spec)
        batch = validator.batch(enumerate(records, start=1), file="<request>")
        layout = DatasetLayout.of(spec)
        subjects = [str(s) for s in batch.columns[spec.subject_key]]
        tokens, keys = self._resolve(spec, layout, batch, subjects)
        subject_tokens = [tokens[s] for s in subjects]
        rows = layout.seal(batch, subject_tokens, tokens, keys, "<request>")
        names = tuple(spec.field_names)
        out = []
        for i, (_ds, key, subject, clear, sealed) in enumerate(rows):
            clear_values = json.loads(clear)
            out.append(
                StagedRecord(
                    record_id=str(batch.columns[spec.record_id][i]),
                    record_key=key,
                    subject=subject,
                    fields=names,
                    clear=clear_values,
                    sealed=None,  # a whole row: ``stored`` holds its sealed blob
                    expected_version=None,
                    tokens=_tokens_of(layout, clear_values),
                    stored=(clear, sealed),
                )
            )
        return out

    def _resolve(
        self, spec: DatasetSpec, layout: DatasetLayout, batch: ValidBatch, subjects: list[str]
    ) -> tuple[dict[str, str], dict[str, FieldKey]]:
        """Tokens for every identifying value and field keys for every subject, made where
        missing, in a vault transaction of their own (as ingest makes them). A subject made
        here whose write then fails is left with no records: it opens nothing."""
        vault = self.vault
        vault.identity.load()
        tokens: dict[str, str] = {}
        with vault.db.transaction(lock=VAULT_LOCK) as cur:
            vault.provider.refresh()
            others = layout.identifying_values(batch, subjects)
            vault._pseudonyms.resolve(cur, subjects, others, tokens)
            wanted = list(dict.fromkeys(tokens[s] for s in subjects))
            keys = vault._keys.load(cur, wanted)
            fresh = [t for t in wanted if t not in keys]
            if fresh:
                self._refuse_erased(spec, layout, batch, subjects, set(fresh), tokens, cur)
                keys.update(vault._keys.create(cur, fresh, iso(vault.clock.now())))
        return tokens, keys

    def _refuse_erased(
        self,
        spec: DatasetSpec,
        layout: DatasetLayout,
        batch: ValidBatch,
        subjects: Sequence[str],
        fresh: set[str],
        tokens: Mapping[str, str],
        cur: Cursor,
    ) -> None:
        try:
            self.vault._refuse_erased(cur, layout, batch, subjects, fresh, tokens)
        except InputError as exc:
            raise WriteRefused(
                410,
                "the subject was erased; their data cannot be written again",
                dataset=spec.name,
                row=exc.row,
                field=spec.subject_key,
            ) from None

    def _existing(self, spec: DatasetSpec, record_id: str) -> tuple[str, str, str]:
        """(record key, subject token, clear JSON) of a live record, or 404. Its sealed blob
        is read where it is used: in the commit (``apply``), under the vault lock."""
        vault = self.vault
        pseudonymized = spec.field(spec.record_id).pseudonymize
        if pseudonymized:
            vault.identity.load()
        with vault.db.transaction() as cur:
            if pseudonymized:
                found = vault._pseudonyms.lookup(cur, [record_id])
                key = str(found[record_id][0]) if record_id in found else None
            else:
                key = record_id
            row = (
                cur.execute(
                    "SELECT r.subject, r.clear FROM vault_records r "
                    "JOIN vault_subjects s ON s.token = r.subject "
                    "WHERE r.dataset = ? AND r.record_key = ?",
                    (spec.name, key),
                ).fetchone()
                if key is not None
                else None
            )
        if row is None or key is None:
            raise WriteRefused(
                404, "no such record", dataset=spec.name, field=spec.record_id, row=1
            )
        return key, str(row[0]), str(row[1])

    def _stage_change(
        self,
        spec: DatasetSpec,
        record_id: str,
        changes: Mapping[str, object],
        expected_version: int | None,
    ) -> StagedRecord:
        values = _validate_changes(spec, changes)
        key, subject, clear_text = self._existing(spec, record_id)
        layout = DatasetLayout.of(spec)
        vault = self.vault
        # One row through the one sealing path: the changed fields hold their new values,
        # the others None (sealed, then dropped: only the changed fields' values are kept).
        row: dict[str, Value] = {name: None for name in spec.field_names}
        row.update(values)
        row[spec.record_id] = record_id
        batch = ValidBatch.from_rows([(1, row)], spec.field_names)
        subjects = [subject]
        tokens: dict[str, str] = {record_id: key} if layout.record_id_pseudonymized else {}
        others = {v: subject for v in layout.identifying_values(batch, subjects) if v not in tokens}
        vault.identity.load()
        with vault.db.transaction(lock=VAULT_LOCK) as cur:
            vault.provider.refresh()
            if others:
                vault._pseudonyms.resolve(cur, [], others, tokens)
            keys = vault._keys.load(cur, [subject])
        if subject not in keys:
            raise WriteRefused(410, "the subject was erased", dataset=spec.name, row=1)
        # The subject key's column is the subject's own token (seal reads it from there).
        tokens.setdefault(subject, subject)
        (_ds, _key, _subj, new_clear, new_sealed) = layout.seal(
            batch, [subject], tokens, keys, "<request>"
        )[0]
        clear_new = json.loads(new_clear)
        sealed_new = codec.unpack_sealed(new_sealed)
        names = tuple(sorted(values))
        clear_set = {n: clear_new[n] for n in names if n in clear_new}
        sealed_set = {n: sealed_new[n] for n in names if n in sealed_new}
        return StagedRecord(
            record_id=record_id,
            record_key=key,
            subject=subject,
            fields=names,
            clear=clear_set,
            sealed=sealed_set,
            expected_version=expected_version,
            tokens=_tokens_of(layout, {**json.loads(clear_text), **clear_new}),
            stored=(_clear_json(clear_set), _pack(layout, sealed_set)),
        )

    def _stage_delete(
        self, spec: DatasetSpec, record_id: str, expected_version: int | None
    ) -> StagedRecord:
        key, subject, _clear = self._existing(spec, record_id)
        return StagedRecord(
            record_id=record_id,
            record_key=key,
            subject=subject,
            fields=tuple(spec.field_names),
            clear=None,
            sealed=None,
            expected_version=expected_version,
            tokens={},
        )

    def _commitment(self, dataset: str, op: WriteOp, records: Sequence[StagedRecord]) -> str:
        """A keyed hash over what the write stores: the ledger entry commits to the content
        without revealing it (the key stays with the custodian, so a guess cannot be
        checked against the public log)."""
        digest = hashlib.sha256()
        for r in records:
            clear, blob = r.stored or ("", b"")
            for part in (r.record_key.encode(), r.subject.encode(), clear.encode(), blob):
                digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: unambiguous
                digest.update(part)
        key = self.vault.identity.load()[1]
        mac = hmac.new(
            key,
            b"bastion/write/v1\x00" + f"{dataset}\x00{op.value}\x00".encode() + digest.digest(),
            hashlib.sha256,
        )
        return "hmac-sha256:" + mac.hexdigest()

    def expected_versions(self, staged: StagedWrite) -> list[int]:
        """Each record's version once this write commits (read now, in one query; re-checked
        in the commit). A record named twice in a batch counts up from its first write."""
        db = self.vault.db
        keys = list(dict.fromkeys(r.record_key for r in staged.records))
        with db.transaction() as cur:
            now = {
                str(key): int(version)
                for key, version in select_in(
                    cur,
                    db.dialect,
                    "SELECT record_key, version FROM vault_records WHERE dataset = ? AND {in}",
                    "record_key",
                    keys,
                    [staged.dataset],
                )
            }
        out = []
        for rec in staged.records:
            now[rec.record_key] = now.get(rec.record_key, 0) + 1
            out.append(now[rec.record_key])
        return out

    # ---- phase 2: store, inside the ledger's commit ------------------------------------------

    def apply(self, cur: Cursor, staged: StagedWrite) -> list[WrittenRecord]:
        """Store a staged write in the caller's transaction (the ledger commit); all records
        or none (the caller's savepoint rolls back on any error).

        This runs inside the ledger's commit, so its cost holds up every other commit: the
        live subjects and the stored records are read with one query each, and new records
        are inserted in bulk (``copy_rows``), not one statement per record."""
        vault = self.vault
        db = vault.db
        db.lock_in(cur, VAULT_LOCK)
        spec = vault.catalog.dataset(staged.dataset)
        at = iso(vault.clock.now())
        layout = DatasetLayout.of(spec)
        subjects = list(dict.fromkeys(r.subject for r in staged.records))
        live = {
            str(token)
            for (token,) in select_in(
                cur, db.dialect, "SELECT token FROM vault_subjects WHERE {in}", "token", subjects
            )
        }
        stored: dict[str, _Stored | None] = {
            str(key): (int(version), str(clear), _blob(sealed))
            for key, version, clear, sealed in select_in(
                cur,
                db.dialect,
                "SELECT record_key, version, clear, sealed FROM vault_records "
                "WHERE dataset = ? AND {in}",
                "record_key",
                list(dict.fromkeys(r.record_key for r in staged.records)),
                [spec.name],
            )
        }
        pending = _Inserts(db, cur)
        written: list[WrittenRecord] = []
        changes = []
        added: dict[str, int] = {}
        for number, rec in enumerate(staged.records, start=1):
            where = {"dataset": spec.name, "row": number, "field": spec.record_id}
            if rec.subject not in live:
                raise WriteRefused(410, "the subject was erased", **where)
            op, version = self._apply_one(pending, spec, layout, staged.op, rec, stored, at, where)
            if op == "insert":
                added[rec.subject] = added.get(rec.subject, 0) + 1
            elif op == "delete":
                added[rec.subject] = added.get(rec.subject, 0) - 1
            changes.append(change_row(spec.name, rec.record_key, version, op, rec.fields, at))
            written.append(
                WrittenRecord(rec.record_id, rec.record_key, rec.subject, version, op == "insert")
            )
        pending.flush()
        vault._add_record_counts(cur, {t: n for t, n in added.items() if n})
        record_changes(db, cur, changes)
        return written

    def _apply_one(
        self,
        pending: _Inserts,
        spec: DatasetSpec,
        layout: DatasetLayout,
        op: WriteOp,
        rec: StagedRecord,
        stored: dict[str, _Stored | None],
        at: str,
        where: dict[str, object],
    ) -> tuple[ChangeOp, int]:
        """One record, against ``stored`` (what the vault holds, kept current as this batch
        goes, so a record named twice in one batch sees its own earlier write)."""
        row = stored.get(rec.record_key)
        if row is None and op is not WriteOp.INSERT and op is not WriteOp.UPSERT:
            raise WriteRefused(404, "no such record", **where)
        if row is not None and op is WriteOp.INSERT:
            raise WriteRefused(409, "a record with this id already exists", **where)
        if row is not None and rec.expected_version is not None and row[0] != rec.expected_version:
            raise WriteRefused(
                412,
                f"the record is at version {row[0]}, not {rec.expected_version} (If-Match)",
                **where,
            )
        if row is None:
            clear_text, blob = _as_stored(layout, rec)
            pending.add((spec.name, rec.record_key, rec.subject, clear_text, blob, 1, at))
            stored[rec.record_key] = (1, clear_text, blob)
            return "insert", 1
        version = row[0] + 1
        # A statement on a record of this batch must come after the insert that made it.
        pending.flush()
        cur = pending.cur
        if op is WriteOp.DELETE:
            cur.execute(
                "DELETE FROM vault_records WHERE dataset = ? AND record_key = ?",
                (spec.name, rec.record_key),
            )
            stored[rec.record_key] = None
            return "delete", version
        if op is WriteOp.UPDATE:
            clear = {**json.loads(row[1]), **(rec.clear or {})}
            sealed = {**codec.unpack_sealed(row[2]), **(rec.sealed or {})}
            clear_text, blob = _clear_json(clear), _pack(layout, sealed)
        else:
            clear_text, blob = _as_stored(layout, rec)
        cur.execute(
            "UPDATE vault_records SET clear = ?, sealed = ?, version = ? "
            "WHERE dataset = ? AND record_key = ?",
            (clear_text, blob, version, spec.name, rec.record_key),
        )
        stored[rec.record_key] = (version, clear_text, blob)
        return "update", version


# A stored record as apply sees it: version, clear JSON, sealed blob.
_Stored = tuple[int, str, bytes]
_INSERT_COLUMNS = (*RECORD_COLUMNS, "version", "stored_at")


class _Inserts:
    """New records of one apply, inserted together (one bulk statement, not one each)."""

    def __init__(self, db: Database, cur: Cursor) -> None:
        self.db, self.cur = db, cur
        self.rows: list[tuple[object, ...]] = []

    def add(self, row: tuple[object, ...]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            try:
                self.db.copy_rows(self.cur, "vault_records", _INSERT_COLUMNS, rows)
            except DuplicateKey:
                # Another writer stored one of these keys since it was read, which the vault
                # lock rules out; refuse rather than guess which record it was.
                raise WriteRefused(409, "a record with this id already exists") from None


def _validate_changes(spec: DatasetSpec, changes: Mapping[str, object]) -> dict[str, Value]:
    """The changed fields, each checked by the catalog's compiled coercer for that field."""
    if not changes:
        raise InputError("no fields to change", dataset=spec.name)
    fixed = {spec.record_id, spec.subject_key}
    out: dict[str, Value] = {}
    for name, raw in changes.items():
        spec.field(name)  # InputError naming an unknown field
        if name in fixed:
            raise InputError(
                "the record id and the subject cannot change; delete and insert instead",
                dataset=spec.name,
                field=name,
            )
        f = spec.field(name)
        try:
            value = compile_field(f)(raw)
        except BadValue as exc:
            raise InputError(str(exc), dataset=spec.name, row=1, field=name) from None
        if value is None and not f.nullable:
            raise InputError("a value is required", dataset=spec.name, row=1, field=name)
        out[name] = value
    return out


def _blob(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("a sealed blob is bytes")
    return bytes(value)


def _tokens_of(layout: DatasetLayout, clear: Mapping[str, object]) -> dict[str, object]:
    return {f.name: clear.get(f.name) for f in layout.clear if f.pseudonymized}


def _as_stored(layout: DatasetLayout, rec: StagedRecord) -> tuple[str, bytes]:
    """A whole row's clear JSON and sealed blob, as sealing made them."""
    if rec.stored is not None:
        return rec.stored
    return _clear_json(rec.clear or {}), _pack(layout, rec.sealed or {})


def _clear_json(clear: Mapping[str, object]) -> str:
    return json.dumps(clear, separators=(",", ":"), ensure_ascii=False)


def _pack(layout: DatasetLayout, sealed: Mapping[str, bytes]) -> bytes:
    """The sealed blob, fields in the layout's order (as ingest writes them)."""
    parts: list[bytes] = []
    for f in layout.sealed:
        if f.name in sealed:
            parts += (f.header, codec.blob_part(sealed[f.name]))
    return codec.pack_sealed(parts)


__all__ = [
    "StagedRecord",
    "StagedWrite",
    "VaultWrites",
    "WriteOp",
    "WriteRefused",
    "WrittenRecord",
]
