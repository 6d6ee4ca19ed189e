"""Group commit for the bulk-threshold counters.

Each release of sensitive data reserves its distinct subjects in the policy part's
``BulkCounter`` (one locked, durable transaction). Under load, concurrent requests of one
principal are merged into ONE reservation: the union of their subjects counted once, which is
exactly what reserving them one after another would have counted. If the merged reservation
would cross a threshold, the requests are replayed one at a time, in arrival order, so only
the requests that actually cross it are refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

from bastion.catalog import SensitiveCategory
from bastion.errors import StoreUnavailable
from bastion.policy import BulkCounter, BulkThresholdExceeded

Usage = Mapping[SensitiveCategory, Iterable[str]]


@dataclass
class _Item:
    principal_id: str
    employer: str
    usage: dict[SensitiveCategory, list[str]]
    done: Future[None] = field(default_factory=Future)


class BulkBatcher:
    """``reserve`` blocks until the reservation is durable, or raises BulkThresholdExceeded.

    It waits at most the database's ``commit_wait_s``: a reservation stuck behind a database
    that stopped answering is StoreUnavailable (a 503, nothing released), not a hang.
    """

    def __init__(self, counter: Callable[[], BulkCounter]) -> None:
        self._counter = counter
        self._queue: list[_Item] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="bulk-batcher")
        self._thread.start()

    def reserve(self, principal_id: str, employer: str, usage: Usage) -> None:
        item = _Item(principal_id, employer, {c: list(v) for c, v in usage.items()})
        with self._cond:
            if self._closed:
                raise RuntimeError("the bulk batcher is closed")
            self._queue.append(item)
            self._cond.notify()
        wait_s = self._counter().db.bounds.commit_wait_s
        try:
            item.done.result(timeout=wait_s)
        except TimeoutError:  # concurrent.futures' is this one since 3.11
            # Counted later perhaps (counting more is the safe side), but released: never.
            raise StoreUnavailable(
                f"the bulk-threshold counter was not updated within {wait_s:g}s; "
                "nothing was released"
            ) from None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
            groups: dict[tuple[str, str], list[_Item]] = {}
            for item in batch:
                groups.setdefault((item.principal_id, item.employer), []).append(item)
            for (principal_id, employer), items in groups.items():
                self._reserve_group(principal_id, employer, items)

    def _reserve_group(self, principal_id: str, employer: str, items: list[_Item]) -> None:
        counter = self._counter()
        if len(items) > 1:
            merged: dict[SensitiveCategory, set[str]] = {}
            for item in items:
                for category, subjects in item.usage.items():
                    merged.setdefault(category, set()).update(subjects)
            try:
                counter.check_and_reserve(
                    principal_id, employer, {c: sorted(s) for c, s in merged.items()}
                )
            except BulkThresholdExceeded:
                pass  # replay one by one below: only the crossing requests are refused
            except BaseException as exc:
                for item in items:
                    item.done.set_exception(exc)
                return
            else:
                for item in items:
                    item.done.set_result(None)
                return
        for item in items:
            try:
                counter.check_and_reserve(principal_id, employer, item.usage)
            except BaseException as exc:
                item.done.set_exception(exc)
            else:
                item.done.set_result(None)
