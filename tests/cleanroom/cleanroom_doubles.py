"""Test doubles for the clean room's tests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

from pydantic import BaseModel

from bastion.events import decode_event, encode_event
from bastion.ledger.api import Receipt


class MemoryLedger:
    """A LedgerWriter that keeps entries in memory; ``fail`` makes every append raise."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.fail = False
        self._lock = threading.Lock()

    def append(self, event: BaseModel) -> Receipt:
        from bastion.errors import LedgerUnavailable

        if self.fail:
            raise LedgerUnavailable("ledger down (test)")
        data = encode_event(event)  # type: ignore[arg-type]
        with self._lock:
            self.entries.append(data)
            index = len(self.entries) - 1
        return Receipt(index, hashlib.sha256(b"\x00" + data).digest())

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        return [self.append(e) for e in events]

    def events(self) -> list[object]:
        return [decode_event(e) for e in self.entries]
