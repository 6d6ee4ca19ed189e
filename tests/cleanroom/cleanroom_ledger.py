"""The clean room's tests against the real transparency log: read it back, take it down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bastion.events import decode_event
from bastion.ledger.log import Log
from bastion.store import Database


def recorded(log: Log) -> list[object]:
    """Every committed entry, read back from the log's storage and decoded, in order."""
    return [decode_event(entry) for _, entry in log.entries(0, log.size())]


@contextmanager
def ledger_outage(db: Database) -> Iterator[None]:
    """The log is down while inside: its state table is out of reach, so every commit fails
    (and rolls back) in the sequencer, which answers LedgerUnavailable. Restored on exit."""
    with db.transaction() as cur:
        cur.execute("ALTER TABLE ledger_state RENAME TO ledger_state_offline")
    try:
        yield
    finally:
        with db.transaction() as cur:
            cur.execute("ALTER TABLE ledger_state_offline RENAME TO ledger_state")
