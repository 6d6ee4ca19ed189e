"""What other parts need from the ledger: append an event, get a receipt.

Parts below the gateway depend on this protocol, never on the log's implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from bastion.store import Cursor

SideWrite = Callable[[Cursor], object]
"""A write of the caller's own that becomes durable exactly when its entries do; it gets the
transaction's cursor. If it raises, its entries are not recorded, whatever it wrote is rolled
back, and the caller gets the exception (see `bastion.ledger.sequencer.Sequencer`)."""


@dataclass(frozen=True)
class Receipt:
    """Proof of recording: the entry's index in the log and its RFC 6962 leaf hash."""

    index: int
    leaf_hash: bytes

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "leaf_hash": self.leaf_hash.hex()}


class LedgerWriter(Protocol):
    def append(self, event: BaseModel) -> Receipt:
        """Durably record one event (canonical JSON). Returns only once committed."""
        ...

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        """Durably record several events in one commit, in order."""
        ...

    def append_entries(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        """Durably record already-encoded entries (an event's canonical JSON, as
        `bastion.events.encode_event` gives it) in one commit, in order. For a caller that
        must keep the exact bytes a receipt covers, and so encodes them itself. `side_write`
        commits with them, or the call fails with what it raised."""
        ...
