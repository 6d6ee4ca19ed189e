"""Retention: records are deleted once their dataset's retention period has passed.

The catalog may declare ``retention_days`` per dataset. A record's age counts from
``vault_records.stored_at``, the time it was first stored (records stored before that column
existed have none, and are kept: their age is unknown, so they are never guessed expired).

The sweeper works in batches. Each batch is one ledger entry, a ``retention.sweep`` event
with counts and keyed refs of the records and their subjects (never a value, never a raw
record key, which can be an identifier), and the delete is that entry's *side write*: on the
database log driver the rows go exactly when the entry is durable, in one transaction that
takes the vault lock after the log's own (the order every side write keeps). Inside it the
batch is read again under the lock; if another writer changed it meanwhile (a record
deleted, rewritten), the side write fails, the entry is left out, and the batch is chosen
again. A deleted record gets a ``delete`` row in the change feed and its subject's record
count goes down by one, as a record delete through the write API does.

With the files log driver the side write commits first and the entry after it, so a crash in
between leaves records deleted without their entry (the deletion was due either way).

What a delete does *not* do is make the value unrecoverable from a backup taken before it:
see docs/SUBJECTS.md, "Backups".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from bastion.catalog import DatasetSpec
from bastion.clock import iso
from bastion.events import SYSTEM, Actor, RetentionSweep, encode_event
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.store import Cursor
from bastion.vault.changes import change_row, record_changes
from bastion.vault.lookup import short_ref
from bastion.vault.schema import VAULT_LOCK, chunks, marks, select_in
from bastion.vault.vault import Vault

# At most this many records per entry: 500 record refs and 500 subject refs of 44 bytes
# each keep a retention.sweep entry near 46 KiB, under the log's 64 KiB.
MAX_BATCH = 500
# A batch that keeps changing under the sweeper is chosen again this many times at most.
_RETRIES = 5


class _BatchChanged(Exception):
    """The batch read before the commit is not what the vault holds under its lock."""


@dataclass
class SweepResult:
    """What one sweep deleted, per dataset, and the ledger entries that record it."""

    deleted: dict[str, int] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def to_json(self) -> dict[str, object]:
        return {
            "deleted": dict(self.deleted),
            "total": self.total,
            "ledger_indexes": [r.index for r in self.receipts],
        }


class RetentionSweeper:
    """Deletes expired records, ``batch_size`` per transaction, each batch recorded."""

    def __init__(
        self,
        vault: Vault,
        writer: LedgerWriter,
        *,
        batch_size: int = MAX_BATCH,
        actor: Actor = SYSTEM,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH}")
        self.vault = vault
        self.writer = writer
        self.batch_size = batch_size
        self.actor = actor

    def _datasets(self) -> list[DatasetSpec]:
        return [d for d in self.vault.catalog.datasets if d.retention_days is not None]

    def _cutoff(self, spec: DatasetSpec) -> str:
        assert spec.retention_days is not None
        return iso(self.vault.clock.now() - timedelta(days=spec.retention_days))

    def expired(self) -> dict[str, int]:
        """How many records each dataset with a retention period holds past it (for a
        progress bar; the sweep itself reads its batches afresh)."""
        out: dict[str, int] = {}
        for spec in self._datasets():
            rows = self.vault.db.query(
                "SELECT COUNT(*) FROM vault_records WHERE dataset = ? "
                "AND stored_at IS NOT NULL AND stored_at < ?",
                (spec.name, self._cutoff(spec)),
            )
            out[spec.name] = int(rows[0][0])
        return out

    def sweep(self, progress: Callable[[str, int], None] | None = None) -> SweepResult:
        """Delete every expired record now. ``progress(dataset, n)`` after each batch."""
        result = SweepResult()
        for spec in self._datasets():
            cutoff = self._cutoff(spec)  # one cutoff per dataset and sweep: it terminates
            result.deleted[spec.name] = 0
            retries = 0
            while True:
                batch = self._select(spec.name, cutoff)
                if not batch:
                    break
                try:
                    receipt = self._delete_recorded(spec, cutoff, batch)
                except _BatchChanged:
                    retries += 1
                    if retries > _RETRIES:
                        raise RuntimeError(
                            f"dataset {spec.name!r}: expired records kept changing during "
                            "the sweep; run it again"
                        ) from None
                    continue
                result.deleted[spec.name] += len(batch)
                result.receipts.append(receipt)
                if progress is not None:
                    progress(spec.name, len(batch))
        return result

    def _select(self, dataset: str, cutoff: str) -> list[tuple[str, str, int]]:
        rows = self.vault.db.query(
            "SELECT record_key, subject, version FROM vault_records WHERE dataset = ? "
            "AND stored_at IS NOT NULL AND stored_at < ? ORDER BY stored_at, record_key LIMIT ?",
            (dataset, cutoff, self.batch_size),
        )
        return [(str(k), str(s), int(v)) for k, s, v in rows]

    def _delete_recorded(
        self, spec: DatasetSpec, cutoff: str, batch: Sequence[tuple[str, str, int]]
    ) -> Receipt:
        vault = self.vault
        lookup_ref = self._subject_ref
        at = iso(vault.clock.now())
        assert spec.retention_days is not None
        event = RetentionSweep(
            actor=self.actor,
            reason=f"retention period of {spec.name} ({spec.retention_days} days) passed",
            at=at,
            dataset=spec.name,
            retention_days=spec.retention_days,
            cutoff=cutoff,
            records=len(batch),
            record_refs=[self._record_ref(spec.name, key) for key, _, _ in batch],
            subject_refs=sorted({lookup_ref(subject) for _, subject, _ in batch}),
        )

        def delete(cur: Cursor) -> None:
            vault.db.lock_in(cur, VAULT_LOCK)
            self._delete(cur, spec.name, cutoff, batch, at)

        (receipt,) = self.writer.append_entries([encode_event(event)], side_write=delete)
        return receipt

    def _delete(
        self,
        cur: Cursor,
        dataset: str,
        cutoff: str,
        batch: Sequence[tuple[str, str, int]],
        at: str,
    ) -> None:
        db = self.vault.db
        keys = [key for key, _, _ in batch]
        now = {
            (str(k), str(s), int(v))
            for k, s, v in select_in(
                cur,
                db.dialect,
                "SELECT record_key, subject, version FROM vault_records WHERE dataset = ? "
                "AND stored_at IS NOT NULL AND stored_at < ? AND {in}",
                "record_key",
                keys,
                [dataset, cutoff],
            )
        }
        if now != set(batch):
            raise _BatchChanged
        if db.dialect == "postgresql":
            cur.execute(
                "DELETE FROM vault_records WHERE dataset = ? AND record_key = ANY(?)",
                (dataset, keys),
            )
        else:
            for chunk in chunks(keys):
                cur.execute(
                    f"DELETE FROM vault_records WHERE dataset = ? "
                    f"AND record_key IN ({marks(len(chunk))})",
                    (dataset, *chunk),
                )
        record_changes(
            db,
            cur,
            [change_row(dataset, key, version + 1, "delete", [], at) for key, _, version in batch],
        )
        counts = Counter(subject for _, subject, _ in batch)
        cur.executemany(
            "UPDATE vault_subjects SET records = records - ? WHERE token = ?",
            [(n, token) for token, n in counts.items()],
        )

    def _subject_ref(self, token: str) -> str:
        # The ref access decisions carry for the subject (``VaultLookup.subject_ref``).
        return short_ref(self.vault.subject_hash(token))

    def _record_ref(self, dataset: str, key: str) -> str:
        # A record key can be an identifier (users' is the user id's token): a keyed ref of
        # it, in a namespace of its own ("record:"), so it matches no subject ref.
        return short_ref(self.vault.subject_hash(f"record:{dataset}/{key}"))
