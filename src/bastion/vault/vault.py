"""The vault: sealed records under per-subject data keys, pseudonyms, shredding and rotation.

Keys, from the top:

* the provider's **KEK** (local keyring file or HSM object, versioned) wraps each subject's
  **data key** (DEK, 256 random bits); the wrapped DEK is a row of ``vault_subjects``.
* the provider's **erasure store** holds one more 256-bit secret per subject, outside the
  database.
* a subject's **field key** is HKDF(DEK, salt = erasure secret). Each value is sealed with
  AES-256-GCM under it; the AAD binds dataset, record, subject, DEK version and field.

Shredding destroys the erasure secret, the wrapped DEK and the subject's pseudonym mappings.
The field key then cannot be rebuilt from anything that remains, and not from an old copy of
the database either: that copy still holds the wrapped DEK, but the erasure secret was never
in it. Shredding leaves the subject's records in place, so its cost does not depend on how
many there are; :meth:`Vault.purge_shredded` removes the dead rows later.

Rotation adds a KEK version and rewraps every DEK; the field ciphertexts are not touched.
See ``pseudonyms.py`` for tokens and ``keys/erasure.py`` for why erasure secrets live apart.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby, islice
from operator import itemgetter
from typing import TYPE_CHECKING, TypeVar

from bastion.catalog import Catalog, Classification, DatasetSpec
from bastion.catalog.compiled import ValidBatch, row_validator
from bastion.clock import Clock, iso
from bastion.errors import InputError, IntegrityError, KeyUnavailable
from bastion.events import Actor, DeletionReceipt, KeyRotation
from bastion.keys.provider import KeyProvider, WrappedKey
from bastion.store import Cursor, Database, DuplicateKey
from bastion.vault.changes import erase_changes, record_changes
from bastion.vault.identity import VaultIdentity, ensure_identity, secret_aad
from bastion.vault.plan import FieldRef, OpenedValues, RecordedPlan
from bastion.vault.pseudonyms import Pseudonyms
from bastion.vault.schema import (
    PG_ANY_CHUNK,
    RECORD_COLUMNS_ADDED,
    SCHEMA,
    VAULT_LOCK,
    chunks,
    select_in,
)
from bastion.vault.sealing import RECORD_COLUMNS, DatasetLayout, RecordRow, ValidRow
from bastion.vault.stored import StoredRecords
from bastion.vault.subject_keys import FieldKey, SubjectKeys

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_BATCH = 2000
# Field keys kept per ingest; beyond this the cache is dropped and keys are unwrapped again.
_KEY_CACHE_LIMIT = 200_000
_TOKEN_CACHE_LIMIT = 1_000_000


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    source: str
    rows: int
    sealed_values: int
    new_subjects: int
    new_pseudonyms: int

    def to_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "source": self.source,
            "rows": self.rows,
            "sealed_values": self.sealed_values,
            "new_subjects": self.new_subjects,
            "new_pseudonyms": self.new_pseudonyms,
        }


@dataclass(frozen=True)
class RecordRef:
    dataset: str
    record: str


@dataclass(frozen=True)
class VaultStats:
    provider: str
    kek_versions: list[dict[str, object]]
    subjects: int
    pseudonyms: int
    erasure_secrets: int
    records: dict[str, int]
    values_by_classification: dict[str, int]
    dead_records: int

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "kek_versions": self.kek_versions,
            "subjects": self.subjects,
            "pseudonyms": self.pseudonyms,
            "erasure_secrets": self.erasure_secrets,
            "records": self.records,
            "values_by_classification": self.values_by_classification,
            "dead_records": self.dead_records,
        }


@dataclass
class _IngestState:
    """Per-file caches (tokens by value, field keys by subject) and what to undo on failure."""

    tokens: dict[str, str] = field(default_factory=dict)
    keys: dict[str, FieldKey] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    created_secrets: list[str] = field(default_factory=list)
    new_subjects: int = 0
    new_pseudonyms: int = 0
    rows: int = 0
    sealed: int = 0


class Vault:
    """Sealed records. Values open only through :meth:`open`, with a :class:`RecordedPlan`."""

    def __init__(self, db: Database, provider: KeyProvider, catalog: Catalog, clock: Clock) -> None:
        self.db = db
        self.provider = provider
        self.catalog = catalog
        self.clock = clock
        self.identity = VaultIdentity(db, provider)
        self._pseudonyms = Pseudonyms(self.identity, db)
        self._keys = SubjectKeys(provider, db)

    # ---- setup ----------------------------------------------------------------------------

    @staticmethod
    def create_schema(db: Database) -> None:
        db.migrate("vault", SCHEMA)
        db.add_columns("vault", "vault_records", RECORD_COLUMNS_ADDED)

    def ensure_identity(self) -> None:
        with self.db.transaction(lock=VAULT_LOCK) as cur:
            ensure_identity(cur, self.provider)

    def close(self) -> None:
        self.provider.close()

    def subject_hash(self, subject: str) -> str:
        return self.identity.subject_hash(subject)

    # ---- ingest ----------------------------------------------------------------------------

    def ingest_rows(
        self,
        dataset: str,
        rows: Iterable[tuple[int, Mapping[str, object]]],
        *,
        source: str = "<api>",
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Validate, pseudonymize, seal and store rows: all of them, or none.

        ``rows`` yields ``(row_number, raw_row)``. Everything runs in ONE database transaction,
        written in batches of ``batch_size`` rows; the first bad row raises an ``InputError``
        naming the source, row and field and the transaction rolls back, so nothing of the
        file is stored. Erasure secrets made for new subjects are destroyed again.
        """
        spec = self.catalog.dataset(dataset)
        validator = row_validator(spec)
        batches = (validator.batch(chunk, file=source) for chunk in _chunks(rows, batch_size))
        return self._ingest(spec, batches, source, progress)

    def ingest_arrow(
        self,
        dataset: str,
        batches: Iterable[pa.RecordBatch],
        *,
        source: str = "<api>",
        first_row: int = 1,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Like :meth:`ingest_rows` for Arrow record batches (rows numbered from ``first_row``).

        Columns are checked whole with Arrow compute; a batch with any problem is checked
        again row by row, so the error names the same row and field ``ingest_rows`` would.
        """
        spec = self.catalog.dataset(dataset)
        validator = row_validator(spec)

        def checked() -> Iterator[ValidBatch]:
            number = first_row
            for record_batch in batches:
                for offset in range(0, record_batch.num_rows, batch_size):
                    part = record_batch.slice(offset, batch_size)
                    yield validator.arrow(part, file=source, first_row=number)
                    number += part.num_rows

        return self._ingest(spec, checked(), source, progress)

    def ingest_validated(
        self,
        dataset: str,
        rows: Iterable[tuple[int, ValidRow]],
        *,
        source: str = "<api>",
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Like :meth:`ingest_rows` for rows that ``catalog.validate_row`` already returned.

        For pipelines that validate elsewhere (and for measuring sealing on its own); a row
        that did not come from ``validate_row`` for this dataset must not be passed here.
        """
        spec = self.catalog.dataset(dataset)
        names = spec.field_names
        batches = (ValidBatch.from_rows(chunk, names) for chunk in _chunks(rows, batch_size))
        return self._ingest(spec, batches, source, progress)

    def _ingest(
        self,
        spec: DatasetSpec,
        batches: Iterable[ValidBatch],
        source: str,
        progress: Callable[[int], None] | None,
    ) -> IngestResult:
        layout = DatasetLayout.of(spec)
        state = _IngestState()
        self.identity.load()  # outside the transaction: it reads the database itself
        try:
            with self.db.transaction(lock=VAULT_LOCK) as cur:
                self.provider.refresh()
                with _RecordWriter(self, cur, layout, source) as writer:
                    for batch in batches:
                        if len(batch):
                            writer.wait()  # the cursor is free again
                            subject_tokens = self._resolve_batch(cur, layout, batch, state)
                            writer.start()  # stores the previous batch, maybe in the background
                            records = layout.seal(
                                batch, subject_tokens, state.tokens, state.keys, source
                            )
                            writer.hold(batch, records)
                            state.rows += len(batch)
                            state.sealed += len(batch) * len(layout.sealed)
                        if progress:
                            progress(len(batch))
                    writer.flush()
                self._add_record_counts(cur, state.counts)
        except BaseException:
            for token in state.created_secrets:
                # An orphan secret opens nothing; sweep_orphan_secrets() removes it later.
                with contextlib.suppress(KeyUnavailable):
                    self.provider.erasure.destroy(token)
            raise
        return IngestResult(
            spec.name, source, state.rows, state.sealed, state.new_subjects, state.new_pseudonyms
        )

    def _resolve_batch(
        self, cur: Cursor, layout: DatasetLayout, batch: ValidBatch, state: _IngestState
    ) -> list[str]:
        """Pseudonyms and field keys for a batch (made where missing); its subject tokens."""
        if len(state.keys) > _KEY_CACHE_LIMIT:
            state.keys.clear()
        if len(state.tokens) > _TOKEN_CACHE_LIMIT:
            state.tokens.clear()
        # 1. Tokens: subject ids first (each owns its own), then the other identifying values.
        subjects = list(map(str, batch.columns[layout.spec.subject_key]))
        others = layout.identifying_values(batch, subjects)
        state.new_pseudonyms += self._pseudonyms.resolve(cur, subjects, others, state.tokens)
        tokens = state.tokens
        subject_tokens = [tokens[s] for s in subjects]
        counts = Counter(subject_tokens)
        # 2. Field keys: cached, else unwrapped, else created (with a new erasure secret).
        needed = [t for t in counts if t not in state.keys]
        if needed:
            loaded = self._keys.load(cur, needed)
            fresh = [t for t in needed if t not in loaded]
            if fresh:
                self._refuse_erased(cur, layout, batch, subjects, set(fresh), tokens)
            state.created_secrets.extend(fresh)
            state.keys.update(loaded)
            # A new subject's row starts with this batch's count; later batches add to it.
            starting = {t: counts.pop(t) for t in fresh}
            state.keys.update(self._keys.create(cur, fresh, iso(self.clock.now()), starting))
            state.new_subjects += len(fresh)
        state.counts.update(counts)
        return subject_tokens

    def _refuse_erased(
        self,
        cur: Cursor,
        layout: DatasetLayout,
        batch: ValidBatch,
        subjects: Sequence[str],
        fresh: set[str],
        tokens: Mapping[str, str],
    ) -> None:
        """A subject without a data key may have been shredded: storing their data again
        would bring an erased person back, so the first such row is refused."""
        candidates = {s: self.identity.subject_hash(s) for s in subjects if tokens[s] in fresh}
        erased = {
            str(h)
            for (h,) in select_in(
                cur,
                self.db.dialect,
                "SELECT subject_hash FROM vault_erased WHERE {in}",
                "subject_hash",
                list(set(candidates.values())),
            )
        }
        if not erased:
            return
        for number, subject in zip(batch.numbers, subjects, strict=True):
            if candidates.get(subject) in erased:
                raise InputError(
                    "this subject was erased; their data cannot be stored again",
                    row=number,
                    dataset=layout.spec.name,
                    field=layout.spec.subject_key,
                )

    def _add_record_counts(self, cur: Cursor, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        if self.db.dialect == "postgresql":
            # One statement per chunk: an UPDATE per subject costs a round trip each.
            items = list(counts.items())
            for chunk in chunks(items, PG_ANY_CHUNK):
                cur.execute(
                    "UPDATE vault_subjects AS s SET records = s.records + u.n "
                    "FROM unnest(?::text[], ?::bigint[]) AS u(token, n) WHERE s.token = u.token",
                    [[t for t, _ in chunk], [n for _, n in chunk]],
                )
            return
        cur.executemany(
            "UPDATE vault_subjects SET records = records + ? WHERE token = ?",
            [(n, token) for token, n in counts.items()],
        )

    def _raise_duplicate(
        self,
        cur: Cursor,
        batch: ValidBatch,
        records: list[RecordRow],
        source: str,
        layout: DatasetLayout,
    ) -> None:
        # copy_rows inserted nothing of this batch, so every key found was stored before:
        # by an earlier ingest or an earlier batch of this one.
        stored = {
            str(key)
            for (key,) in select_in(
                cur,
                self.db.dialect,
                "SELECT record_key FROM vault_records WHERE dataset = ? AND {in}",
                "record_key",
                [r[1] for r in records],
                [layout.spec.name],
            )
        }
        for row_number, rec in zip(batch.numbers, records, strict=True):
            if rec[1] in stored:
                raise InputError(
                    "duplicate record id (already stored, or earlier in this file)",
                    file=source,
                    row=row_number,
                    dataset=layout.spec.name,
                    field=layout.spec.record_id,
                )
        raise IntegrityError("the database refused records whose keys it does not hold")

    # ---- open ------------------------------------------------------------------------------

    def open(self, recorded: RecordedPlan, stored: StoredRecords | None = None) -> OpenedValues:
        """Open exactly the (record, field) pairs of a recorded plan, and nothing else.

        ``stored``: the plan's rows as this vault already read them (``VaultLookup``, before
        the plan was recorded), so that a release reads ``vault_records`` once; their sealed
        blobs are opened now, under the plan. Without it the rows are read here.

        All or nothing: a record that does not exist is an ``InputError``; a shredded
        subject's value is ``KeyUnavailable``; a value or wrapped key that fails
        authentication is ``IntegrityError``. An empty plan reads nothing.
        """
        if not isinstance(recorded, RecordedPlan):
            raise TypeError("Vault.open takes a RecordedPlan (a plan with its ledger receipt)")
        if stored is not None and not isinstance(stored, StoredRecords):
            raise TypeError("Vault.open takes the StoredRecords a vault read, or none")
        plan = recorded.plan
        spec = self.catalog.dataset(plan.dataset)
        names = set(map(itemgetter(1), plan.items))
        for name in names:
            spec.field(name)  # unknown fields fail before anything is read
        if not plan.items:
            return OpenedValues(plan.dataset, recorded.receipt, {})
        # Plans list a record's fields together, so grouping runs over runs, not items.
        grouped: dict[str, list[FieldRef]] = {}
        for record, run in groupby(plan.items, itemgetter(0)):
            found = grouped.get(record)
            if found is None:
                grouped[record] = list(run)
            else:
                found.extend(run)
        records = list(grouped)
        # The clear column is read only when a public value is planned.
        wants_clear = any(
            spec.field(name).classification is Classification.PUBLIC for name in names
        )
        clear_column = "clear" if wants_clear else "NULL"
        rows: dict[str, tuple[str, str | None, bytes]] = {}
        with self.db.transaction() as cur:
            if stored is None:
                for key, subject, clear, sealed in select_in(
                    cur,
                    self.db.dialect,
                    f"SELECT record_key, subject, {clear_column}, sealed FROM vault_records "
                    "WHERE dataset = ? AND {in}",
                    "record_key",
                    records,
                    [plan.dataset],
                ):
                    rows[key] = (subject, clear, bytes(sealed))
            else:
                rows = _stored_rows(stored, plan.dataset, records)
            missing = len(records) - len(rows)
            if missing:
                raise InputError(
                    f"no such record ({missing} of the plan's records)", dataset=plan.dataset
                )
            tokens = list(dict.fromkeys(r[0] for r in rows.values()))
            keys = self._keys.load(cur, tokens)
        if len(keys) != len(tokens):
            raise KeyUnavailable(
                "the plan includes records whose subject was shredded: their data key is destroyed"
            )
        opened = DatasetLayout.of(spec).open_items(grouped, rows, keys)
        return OpenedValues(plan.dataset, recorded.receipt, opened)

    # ---- reads that decrypt nothing (for the gateway) --------------------------------------

    def pseudonym_of(self, value: str) -> str | None:
        """The token already given to ``value``, if any. Never creates one."""
        self.identity.load()
        with self.db.transaction() as cur:
            found = self._pseudonyms.lookup(cur, [value])
        return found[value][0] if value in found else None

    def record_key(self, dataset: str, record_id: str) -> str | None:
        """The vault's key for a record id: its pseudonym where the id is pseudonymized."""
        spec = self.catalog.dataset(dataset)
        if spec.field(spec.record_id).pseudonymize:
            return self.pseudonym_of(record_id)
        return record_id

    def subject_records(
        self, subject: str, dataset: str | None = None, *, limit: int = 1000
    ) -> list[RecordRef]:
        """Records about a subject (by subject id), found without decrypting anything."""
        token = self.pseudonym_of(subject)
        if token is None:
            return []
        sql = "SELECT dataset, record_key FROM vault_records WHERE subject = ?"
        params: list[object] = [token]
        if dataset is not None:
            self.catalog.dataset(dataset)
            sql += " AND dataset = ?"
            params.append(dataset)
        rows = self.db.query(sql + " ORDER BY dataset, record_key LIMIT ?", [*params, limit])
        return [RecordRef(d, r) for d, r in rows]

    def records_of_subject_tokens(
        self, tokens: Sequence[str], dataset: str, *, limit: int = 1000
    ) -> list[str]:
        """Record keys of the subjects with these pseudonym tokens (unknown tokens match
        nothing), found without decrypting anything."""
        self.catalog.dataset(dataset)
        unique = list(dict.fromkeys(tokens))
        if not unique:
            return []
        marks = ", ".join("?" for _ in unique)
        rows = self.db.query(
            f"SELECT record_key FROM vault_records WHERE dataset = ? AND subject IN ({marks}) "
            "ORDER BY record_key LIMIT ?",
            [dataset, *unique, limit],
        )
        return [r for (r,) in rows]

    def list_records(
        self, dataset: str, *, after: str | None = None, limit: int = 100
    ) -> list[str]:
        """Record keys of a dataset in order, ``limit`` at a time after ``after`` (keyset)."""
        self.catalog.dataset(dataset)
        if not 0 < limit <= 10_000:
            raise InputError("limit must be between 1 and 10000", dataset=dataset)
        rows = self.db.query(
            "SELECT record_key FROM vault_records WHERE dataset = ? AND record_key > ? "
            "ORDER BY record_key LIMIT ?",
            (dataset, after or "", limit),
        )
        return [r for (r,) in rows]

    def clear_values(
        self,
        dataset: str,
        record_keys: Sequence[str],
        fields: Sequence[str],
        stored: StoredRecords | None = None,
    ) -> dict[str, dict[str, object]]:
        """Public values and pseudonym tokens (stored in clear). Sealed fields are refused.
        ``stored``: the rows as already read (records absent from them are left out)."""
        spec = self.catalog.dataset(dataset)
        for name in fields:
            f = spec.field(name)
            if f.classification is not Classification.PUBLIC and not f.pseudonymize:
                raise InputError(
                    "field is sealed; it opens only through a recorded plan",
                    dataset=dataset,
                    field=name,
                )
        out: dict[str, dict[str, object]] = {}
        if stored is not None:
            for key, stored_row in _stored_rows(stored, dataset, record_keys).items():
                values = json.loads(stored_row[1] or "{}")
                out[key] = {name: values.get(name) for name in fields}
            return out
        with self.db.transaction() as cur:
            for key, clear in select_in(
                cur,
                self.db.dialect,
                "SELECT record_key, clear FROM vault_records WHERE dataset = ? AND {in}",
                "record_key",
                list(dict.fromkeys(record_keys)),
                [dataset],
            ):
                values = json.loads(clear)
                out[key] = {name: values.get(name) for name in fields}
        return out

    # ---- shred -----------------------------------------------------------------------------

    def shred(self, subject: str, actor: Actor, reason: str) -> DeletionReceipt:
        """Crypto-shred a subject: destroy its erasure secret, data key and pseudonym mappings.

        Constant work whatever the subject's record count: the records stay behind as
        ciphertext that nothing can open, until :meth:`purge_shredded` removes them.
        """
        subject_hash = self.identity.subject_hash(subject)
        index = self.identity.index(subject)
        with self.db.transaction(lock=VAULT_LOCK) as cur:
            row = cur.execute(
                "SELECT token FROM vault_pseudonyms WHERE idx = ?", (index,)
            ).fetchone()
            key = None
            if row is not None:
                key = cur.execute(
                    "SELECT dek_version, records FROM vault_subjects WHERE token = ?", (row[0],)
                ).fetchone()
            if row is None or key is None:
                raise InputError(
                    "no such subject in the vault (never ingested, or already shredded)"
                )
            token = str(row[0])
            dek_version, records = int(key[0]), int(key[1])
            # The irreversible step first: if anything after it fails, the values are already
            # gone and shredding again finishes the bookkeeping.
            self.provider.erasure.destroy(token)
            at = iso(self.clock.now())
            erase_changes(cur, token, at)
            cur.execute(
                "INSERT INTO vault_erased (subject_hash, at) VALUES (?, ?) "
                "ON CONFLICT (subject_hash) DO NOTHING",
                (subject_hash, at),
            )
            cur.execute("DELETE FROM vault_subjects WHERE token = ?", (token,))
            removed = cur.execute("DELETE FROM vault_pseudonyms WHERE owner = ?", (token,)).rowcount
        return DeletionReceipt(
            actor=actor,
            reason=reason,
            at=iso(self.clock.now()),
            subject_hash=subject_hash,
            key_id=f"subject-dek:{self.identity.key_fingerprint(token)}/v{dek_version}",
            records_affected=records,
            pseudonyms_removed=removed,
        )

    def purge_shredded(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` records whose subject was shredded (dead ciphertext)."""
        with self.db.transaction() as cur:
            return cur.execute(
                "DELETE FROM vault_records WHERE (dataset, record_key) IN ("
                "SELECT r.dataset, r.record_key FROM vault_records r LEFT JOIN vault_subjects s "
                "ON s.token = r.subject WHERE s.token IS NULL LIMIT ?)",
                (limit,),
            ).rowcount

    def sweep_orphan_secrets(self) -> int:
        """Destroy erasure secrets no subject row uses (left by a crash during an ingest)."""
        with self.db.transaction(lock=VAULT_LOCK) as cur:
            refs = self.provider.erasure.refs()
            live = {
                str(t)
                for (t,) in select_in(
                    cur,
                    self.db.dialect,
                    "SELECT token FROM vault_subjects WHERE {in}",
                    "token",
                    refs,
                )
            }
            orphans = [r for r in refs if r not in live]
            for ref in orphans:
                self.provider.erasure.destroy(ref)
        return len(orphans)

    # ---- rotation --------------------------------------------------------------------------

    def rotate(
        self,
        actor: Actor,
        reason: str,
        *,
        batch_size: int = 1000,
        progress: Callable[[int, int], None] | None = None,
    ) -> KeyRotation:
        """Add a KEK version and rewrap every data key under it; field ciphertexts stay as is.

        Runs in batches, each its own transaction under the vault lock; if it is interrupted,
        running it again finishes the job (rows already under the new version are skipped).
        """
        old = self.provider.current_version
        with self.db.transaction(lock=VAULT_LOCK):
            new = self.provider.rotate()
        pending = self.db.query(
            "SELECT COUNT(*) FROM vault_subjects WHERE kek_version <> ?", (new,)
        )
        secrets_pending = self.db.query(
            "SELECT COUNT(*) FROM vault_secrets WHERE kek_version <> ?", (new,)
        )
        total = int(pending[0][0]) + int(secrets_pending[0][0])
        done = 0
        while True:
            with self.db.transaction(lock=VAULT_LOCK) as cur:
                n = self._keys.rewrap_batch(cur, new, batch_size)
            done += n
            if progress:
                progress(done, total)
            if n < batch_size:
                break
        with self.db.transaction(lock=VAULT_LOCK) as cur:
            for name, kek_version, wrapped in cur.execute(
                "SELECT name, kek_version, wrapped FROM vault_secrets WHERE kek_version <> ?",
                (new,),
            ).fetchall():
                aad = secret_aad(name)
                plain = self.provider.unwrap(WrappedKey(int(kek_version), bytes(wrapped)), aad)
                rewrapped = self.provider.wrap(plain, aad)
                cur.execute(
                    "UPDATE vault_secrets SET kek_version = ?, wrapped = ? WHERE name = ?",
                    (rewrapped.version, rewrapped.blob, name),
                )
                done += 1
        if progress:
            progress(done, max(total, done))
        return KeyRotation(
            actor=actor,
            reason=reason,
            at=iso(self.clock.now()),
            provider=self.provider.name,
            old_version=old,
            new_version=new,
            rewrapped=done,
        )

    def retire(self, version: int, actor: Actor, reason: str) -> KeyRotation:
        """Destroy an old KEK version, once no key in this database is wrapped under it."""
        self.provider.refresh()
        if version == self.provider.current_version:
            raise InputError(
                f"KEK version {version} is the current one; rotate first, then retire it"
            )
        with self.db.transaction(lock=VAULT_LOCK) as cur:
            row = cur.execute(
                "SELECT (SELECT COUNT(*) FROM vault_subjects WHERE kek_version = ?) + "
                "(SELECT COUNT(*) FROM vault_secrets WHERE kek_version = ?)",
                (version, version),
            ).fetchone()
            still = int(row[0]) if row else 0
            if still:
                raise InputError(
                    f"KEK version {version} still wraps {still} keys; run `bastion keys rotate` "
                    "first"
                )
            self.provider.retire(version)
        return KeyRotation(
            actor=actor,
            reason=reason,
            at=iso(self.clock.now()),
            provider=self.provider.name,
            old_version=version,
            new_version=self.provider.current_version,
            rewrapped=0,
            retired=[version],
        )

    def key_usage(self) -> dict[int, int]:
        """How many data keys each KEK version wraps."""
        rows = self.db.query(
            "SELECT kek_version, COUNT(*) FROM vault_subjects GROUP BY kek_version"
        )
        return {int(v): int(n) for v, n in rows}

    # ---- stats -----------------------------------------------------------------------------

    def stats(self) -> VaultStats:
        records = dict.fromkeys(self.catalog.names, 0)
        for dataset, n in self.db.query(
            "SELECT dataset, COUNT(*) FROM vault_records GROUP BY dataset"
        ):
            records[str(dataset)] = int(n)
        by_class = {c.value: 0 for c in Classification}
        for spec in self.catalog.datasets:
            for f in spec.fields:
                by_class[f.classification.value] += records.get(spec.name, 0)
        dead = self.db.query(
            "SELECT COUNT(*) FROM vault_records r LEFT JOIN vault_subjects s "
            "ON s.token = r.subject WHERE s.token IS NULL"
        )
        usage = self.key_usage()
        return VaultStats(
            provider=self.provider.name,
            kek_versions=[
                {"version": v.version, "state": v.state, "data_keys": usage.get(v.version, 0)}
                for v in self.provider.versions()
            ],
            subjects=int(self.db.query("SELECT COUNT(*) FROM vault_subjects")[0][0]),
            pseudonyms=int(self.db.query("SELECT COUNT(*) FROM vault_pseudonyms")[0][0]),
            erasure_secrets=self.provider.erasure.count(),
            records=records,
            values_by_classification=by_class,
            dead_records=int(dead[0][0]),
        )


class _RecordWriter:
    """Stores sealed batches in ``vault_records``, all rows of a batch or none.

    Where the database does the writing in another process (PostgreSQL), one batch is
    stored by a worker thread while the caller seals the next: the caller calls
    :meth:`wait` before it uses the cursor itself, and the worker uses the cursor only in
    between. A store that fails is reported at the next :meth:`wait`, or when the ingest
    fails for another reason, since its rows come earlier in the file.
    """

    def __init__(self, vault: Vault, cur: Cursor, layout: DatasetLayout, source: str) -> None:
        self._vault = vault
        self._cur = cur
        self._layout = layout
        self._source = source
        self._held: tuple[ValidBatch, list[RecordRow]] | None = None
        self._at = iso(vault.clock.now())
        self._fields = json.dumps(sorted(layout.spec.field_names))
        self._failed = False
        self._running: tuple[ValidBatch, list[RecordRow], Future[None]] | None = None
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="vault-copy")
            if vault.db.bulk_load_in_background
            else None
        )

    def __enter__(self) -> _RecordWriter:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        # On failure, report the earliest bad row: a store still running, or the batch held
        # back, holds rows that come before those of a later batch's InputError.
        try:
            if error is not None and not self._failed:
                self.wait()
                if isinstance(error, InputError):
                    self.start()
                    self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _store(self, records: list[RecordRow]) -> None:
        db, at = self._vault.db, self._at
        db.copy_rows(self._cur, "vault_records", _STORED_COLUMNS, [(*r, at) for r in records])
        fields = self._fields
        record_changes(db, self._cur, [(r[0], r[1], 1, "insert", fields, at) for r in records])

    def hold(self, batch: ValidBatch, records: list[RecordRow]) -> None:
        """Keep a sealed batch until :meth:`start` (after the next batch's key lookups)."""
        self._held = (batch, records)

    def start(self) -> None:
        """Store the held batch: in the background where that pays, else now."""
        if self._held is None:
            return
        batch, records = self._held
        self._held = None
        if self._pool is None:
            self._stored(batch, records, None)
        else:
            self._running = (batch, records, self._pool.submit(self._store, records))

    def wait(self) -> None:
        """Wait for a background store; raise what it failed with."""
        if self._running is not None:
            batch, records, future = self._running
            self._running = None
            self._stored(batch, records, future)

    def flush(self) -> None:
        self.wait()
        self.start()
        self.wait()

    def _stored(
        self, batch: ValidBatch, records: list[RecordRow], future: Future[None] | None
    ) -> None:
        try:
            if future is None:
                self._store(records)
            else:
                future.result()
        except DuplicateKey:
            self._failed = True
            self._vault._raise_duplicate(self._cur, batch, records, self._source, self._layout)
        except BaseException:
            self._failed = True
            raise


T = TypeVar("T")
_STORED_COLUMNS = (*RECORD_COLUMNS, "stored_at")


def _stored_rows(
    stored: StoredRecords, dataset: str, record_keys: Iterable[str]
) -> dict[str, tuple[str, str | None, bytes]]:
    """The rows of ``record_keys`` that ``stored`` holds, as ``open`` reads them."""
    if not isinstance(stored, StoredRecords) or stored.dataset != dataset:
        raise InputError("the stored records are not of the plan's dataset", dataset=dataset)
    if not stored.with_values:
        raise InputError("the stored records were read without their values", dataset=dataset)
    rows: dict[str, tuple[str, str | None, bytes]] = {}
    for key in record_keys:
        row = stored.get(key)
        if row is not None and row.sealed is not None:
            rows[key] = (row.subject, row.clear, row.sealed)
    return rows


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
