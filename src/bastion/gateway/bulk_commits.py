"""Bulk-counted releases of one principal share a ledger submission, and one count.

Each bulk-counted release is counted (28 CFR 202.205) in the ledger commit that records it:
the count is the submission's side write. The sequencer runs side writes one after another,
each in a savepoint of its own, and a count is several statements (about ten round trips on
PostgreSQL), so releases of one principal arriving together would queue behind each other's
counts. Instead, the releases of one principal (and employer) that arrive while one of theirs
is being submitted wait, and then go as ONE submission: their entries, each release's
consecutive and in arrival order, with ONE count of the union of their subjects, which is
exactly what counting them one after another would have counted. If the union would cross a
threshold, the group is submitted again one release at a time, in arrival order, so only the
releases that cross it are refused.

A release waits at most ``wait_s`` for its turn (then LedgerUnavailable: nothing released;
its entries may still be recorded later, which releases nothing either).

Each waiting release has an event of its own, set when it is handed the turn or its group's
outcome: under load dozens of a principal's releases wait at once, and waking all of them
whenever any group finishes (one condition for all) cost more CPU than the counting saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from bastion.catalog import SensitiveCategory
from bastion.errors import LedgerUnavailable
from bastion.ledger.api import Receipt, SideWrite
from bastion.policy import BulkThresholdExceeded
from bastion.store import Cursor

Usage = Mapping[SensitiveCategory, Sequence[str]]
Append = Callable[[Sequence[bytes], SideWrite], list[Receipt]]
Reserve = Callable[[Cursor, Usage], object]


class SideWriteFailed(Exception):
    """What a side write raised, told apart from the ledger's own failures."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


def guarded(side_write: SideWrite) -> SideWrite:
    """``side_write``, its exceptions wrapped in SideWriteFailed."""

    def run(cur: Cursor) -> object:
        try:
            return side_write(cur)
        except Exception as exc:
            raise SideWriteFailed(exc) from exc

    return run


@dataclass(eq=False)
class _Release:
    entries: list[bytes]
    usage: Usage
    done: Future[list[Receipt]] = field(default_factory=Future)
    lead: bool = False
    # Set (once) when this release is handed the turn or its group has its outcome.
    wake: threading.Event = field(default_factory=threading.Event)


class BulkCommits:
    """``append`` blocks until the release's entries and its count are durable together, or
    raises what the count raised (wrapped in SideWriteFailed) or the ledger's failure."""

    def __init__(self, append: Append, wait_s: float) -> None:
        self._append = append
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, str], list[_Release]] = {}

    def append(
        self, key: tuple[str, str], entries: Sequence[bytes], usage: Usage, reserve: Reserve
    ) -> list[Receipt]:
        me = _Release(list(entries), usage)
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = [me]
                me.lead = True  # nobody of this key is submitting: go now
            else:
                queue.append(me)
        if not me.lead and not me.wake.wait(self._wait_s):
            with self._lock:
                queue = self._queues.get(key)
                # Still queued, and not handed the turn (the head of the queue leads it).
                if not me.lead and queue is not None and me in queue:
                    queue.remove(me)
                    raise LedgerUnavailable(
                        f"no commit within {self._wait_s:g}s; nothing was released"
                    )
            me.wake.wait()  # taken into a group, or handed the turn, just now: it is coming
        if me.lead:
            self._lead(key, reserve)
        return me.done.result()

    def _lead(self, key: tuple[str, str], reserve: Reserve) -> None:
        """Submit every release of ``key`` waiting now (this one first among them), then
        hand the turn to the first that arrived meanwhile."""
        with self._lock:
            group = self._queues[key]
            self._queues[key] = []
        try:
            self._submit(group, reserve)
        except BaseException as exc:  # never leave a release of the group without an outcome
            for release in group:
                if not release.done.done():
                    release.done.set_exception(
                        exc if isinstance(exc, Exception) else LedgerUnavailable("interrupted")
                    )
            raise
        finally:
            with self._lock:
                waiting = self._queues[key]
                if waiting:
                    waiting[0].lead = True
                    waiting[0].wake.set()
                else:
                    del self._queues[key]
            for release in group:  # each has its outcome now
                release.wake.set()

    def _submit(self, group: list[_Release], reserve: Reserve) -> None:
        if len(group) > 1:
            union: dict[SensitiveCategory, dict[str, None]] = {}
            for release in group:
                for category, items in release.usage.items():
                    union.setdefault(category, {}).update(dict.fromkeys(items))
            merged = {c: list(items) for c, items in union.items()}
            entries = [e for release in group for e in release.entries]
            try:
                receipts = self._append(entries, guarded(_bound(reserve, merged)))
            except SideWriteFailed as exc:
                if not isinstance(exc.error, BulkThresholdExceeded):
                    _fail(group, exc)
                    return
                # Replayed one by one below: only the releases that cross it are refused.
            except Exception as exc:
                _fail(group, exc)
                return
            else:
                start = 0
                for release in group:
                    end = start + len(release.entries)
                    release.done.set_result(receipts[start:end])
                    start = end
                return
        for release in group:
            try:
                own = self._append(release.entries, guarded(_bound(reserve, release.usage)))
            except Exception as exc:
                release.done.set_exception(exc)
            else:
                release.done.set_result(own)


def _bound(reserve: Reserve, usage: Usage) -> SideWrite:
    def write(cur: Cursor) -> object:
        return reserve(cur, usage)

    return write


def _fail(group: list[_Release], exc: Exception) -> None:
    for release in group:
        release.done.set_exception(exc)
