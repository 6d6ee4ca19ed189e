"""The retention sweeper, and what a record delete and a shred guarantee against a backup.

Both backends. Every claim of docs/SUBJECTS.md ("Retention", "Backups") has its test here:
a record past its dataset's retention is deleted in batches, each batch recorded with keyed
refs only, with change rows and subject counts kept; a record delete leaves the sealed value
recoverable from a copy of the database taken before it (with the live keys); a shred leaves
nothing that opens, in that copy either.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import vault_rows as R
from test_vault_shred import OPERATOR, copies  # noqa: F401  (the backup-taking fixture)

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.errors import KeyUnavailable
from bastion.events import RetentionSweep, decode_event
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Database
from bastion.vault import RecordedPlan, Vault
from bastion.vault.changes import read_changes
from bastion.vault.retention import MAX_BATCH, RetentionSweeper

Recorded = Callable[[str, list[tuple[str, str]]], RecordedPlan]


@pytest.fixture
def log(db: Database, clock: FixedClock) -> Iterator[Log]:
    storage.create_tables(db)
    out = Log(db, NoteSigner.generate("bastion.test/log"), clock, background=False)
    yield out
    out.close()


def _load(vault: Vault, clock: FixedClock) -> None:
    """Users 1 and 2, and 20 events of theirs; 12 of the events are 200 days old."""
    vault.ingest_rows("users", R.numbered([R.user(1), R.user(2)]))
    vault.ingest_rows("events", R.numbered([R.event(i, 1 + i % 2) for i in range(12)]))
    clock.advance(timedelta(days=200))
    vault.ingest_rows("events", R.numbered([R.event(i, 1 + i % 2) for i in range(12, 20)]))


def _records(vault: Vault, token: str) -> int:
    return int(vault.db.query("SELECT records FROM vault_subjects WHERE token = ?", (token,))[0][0])


def test_expired_records_are_deleted_in_recorded_batches(
    vault: Vault, log: Log, clock: FixedClock
) -> None:
    _load(vault, clock)
    t1 = vault.pseudonym_of("u00001")
    assert t1 is not None and _records(vault, t1) == 1 + 10
    sweeper = RetentionSweeper(vault, log, batch_size=5)
    assert sweeper.expired() == {"events": 12}
    seen: list[tuple[str, int]] = []
    result = sweeper.sweep(lambda dataset, n: seen.append((dataset, n)))
    assert result.deleted == {"events": 12} and seen == [("events", 5)] * 2 + [("events", 2)]
    assert len(result.receipts) == 3
    # The old events are gone, the recent ones and every user (no retention) stay.
    left = {
        k
        for (k,) in vault.db.query("SELECT record_key FROM vault_records WHERE dataset = 'events'")
    }
    assert left == {f"e{i:08d}" for i in range(12, 20)}
    assert vault.stats().records["users"] == 2
    # Subject counts went down with the deletes: user 1 had 6 old events of 10.
    assert _records(vault, t1) == 1 + 4
    # Each delete is in the change feed, after the ingest's inserts.
    deletes = [c for c in read_changes(vault.db, "events", 0, 1000) if c.op == "delete"]
    assert sorted(c.record_key for c in deletes) == [f"e{i:08d}" for i in range(12)]
    assert all(c.version == 2 and c.fields == () for c in deletes)
    # Each batch's entry: counts and keyed refs, never a key, a subject id or a value.
    total = 0
    for receipt in result.receipts:
        entry = log.entry(receipt.index)
        event = decode_event(entry)
        assert isinstance(event, RetentionSweep)
        assert event.dataset == "events" and event.retention_days == 180
        assert len(event.record_refs) == event.records and event.subject_refs
        assert all(r.startswith("hmac-sha256:") for r in event.record_refs + event.subject_refs)
        text = entry.decode()
        assert "e0000" not in text and "u0000" not in text and t1 not in text
        total += event.records
    assert total == 12
    # Nothing more to do: a second sweep deletes and records nothing.
    again = sweeper.sweep()
    assert again.total == 0 and again.receipts == []


def test_records_without_a_stored_time_are_kept(vault: Vault, log: Log, clock: FixedClock) -> None:
    _load(vault, clock)
    with vault.db.transaction() as cur:
        cur.execute("UPDATE vault_records SET stored_at = NULL WHERE record_key = 'e00000000'")
    clock.advance(timedelta(days=365))
    assert RetentionSweeper(vault, log).sweep().deleted == {"events": 19}
    keys = [
        k
        for (k,) in vault.db.query("SELECT record_key FROM vault_records WHERE dataset = 'events'")
    ]
    assert keys == ["e00000000"]


def test_a_failed_ledger_append_deletes_nothing(vault: Vault, log: Log, clock: FixedClock) -> None:
    _load(vault, clock)

    class Broken:
        def append_entries(self, entries: object, *, side_write: object = None) -> list[object]:
            raise OSError("the ledger is down")

    with pytest.raises(OSError):
        RetentionSweeper(vault, Broken()).sweep()  # type: ignore[arg-type]
    assert vault.stats().records["events"] == 20


def test_a_batch_changed_under_the_sweeper_is_chosen_again(
    vault: Vault, log: Log, clock: FixedClock
) -> None:
    """A record deleted by another writer between the sweeper's read and its commit: the
    entry that named it is left out of the log, and the batch is read again."""
    _load(vault, clock)
    sweeper = RetentionSweeper(vault, log, batch_size=MAX_BATCH)
    real_select = sweeper._select
    calls = {"n": 0}

    def racing(dataset: str, cutoff: str) -> list[tuple[str, str, int]]:
        batch = real_select(dataset, cutoff)
        calls["n"] += 1
        if calls["n"] == 1:
            with vault.db.transaction() as cur:
                cur.execute("DELETE FROM vault_records WHERE record_key = 'e00000003'")
        return batch

    sweeper._select = racing  # type: ignore[method-assign]
    size = log.size()
    result = sweeper.sweep()
    assert result.deleted == {"events": 11} and calls["n"] == 3
    assert log.size() == size + 1  # one entry: the first attempt's was left out
    event = decode_event(log.entry(size))
    assert isinstance(event, RetentionSweep) and event.records == 11


# ---- Backups (docs/SUBJECTS.md): what a record delete and a shred guarantee -------------


def test_a_record_delete_leaves_the_value_in_an_earlier_backup(
    vault: Vault,
    log: Log,
    clock: FixedClock,
    recorded: Recorded,
    copies: Callable[[Database], Database],  # noqa: F811
) -> None:
    """The plain-words claim: a deleted record's sealed value is still in last night's
    backup, and the custodian's live keys open it there."""
    _load(vault, clock)
    backup = copies(vault.db)  # last night's backup, taken before the delete
    assert RetentionSweeper(vault, log).sweep().deleted == {"events": 12}
    # Gone from the live vault...
    with pytest.raises(Exception, match="no such record"):
        vault.open(recorded("events", [("e00000000", "device_id")]))
    # ...but the backup, opened with the live keys, still gives the value.
    old = Vault(backup, vault.provider, default_catalog(), clock)
    value = old.open(recorded("events", [("e00000000", "device_id")])).get_value(
        "e00000000", "device_id"
    )
    assert value == R.event(0, 1)["device_id"]


def test_a_shred_leaves_nothing_that_opens_in_an_earlier_backup(
    vault: Vault,
    clock: FixedClock,
    recorded: Recorded,
    copies: Callable[[Database], Database],  # noqa: F811
) -> None:
    """The other claim: after a shred, the same backup opens none of the subject's values,
    because the erasure secret their field key needs was never in the database."""
    _load(vault, clock)
    t1 = vault.pseudonym_of("u00001")
    assert t1 is not None
    backup = copies(vault.db)
    vault.shred("u00001", OPERATOR, "erasure")
    old = Vault(backup, vault.provider, default_catalog(), clock)
    assert old.pseudonym_of("u00001") == t1  # the backup still has the rows and the key
    for dataset, record in (("users", t1), ("events", "e00000000"), ("events", "e00000012")):
        with pytest.raises(KeyUnavailable):
            old.open(recorded(dataset, [(record, "email" if dataset == "users" else "ts")]))
    # A subject who was not shredded still opens from the backup.
    t2 = vault.pseudonym_of("u00002")
    assert t2 is not None
    assert old.open(recorded("users", [(t2, "email")])).get_value(t2, "email") == (
        "person2@example.com"
    )
    # And the backup's sealed bytes carry no clear value of the shredded subject.
    dump = json.dumps(
        [[str(c) for c in row] for row in backup.query("SELECT * FROM vault_records")]
    )
    assert "person1@example.com" not in dump
