"""Bulk-counted releases of one principal share a submission and one count of their union.

A fake ledger holds the first submission open, so the releases that arrive meanwhile queue
behind it and go together; a union past the threshold is replayed one release at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from bastion.catalog import SensitiveCategory
from bastion.errors import LedgerUnavailable
from bastion.gateway.bulk_commits import BulkCommits, SideWriteFailed
from bastion.ledger.api import Receipt, SideWrite
from bastion.policy import BulkThresholdExceeded

GEO = SensitiveCategory.PRECISE_GEOLOCATION
KEY = ("kenji", "globalco")


class FakeLedger:
    """Runs each submission's side write, then 'commits' it; the first one waits for a go."""

    def __init__(self, limit: int, fail: bool = False) -> None:
        self.limit = limit
        self.fail = fail
        self.counted: set[str] = set()
        self.submissions: list[list[bytes]] = []
        self.first_in = threading.Event()
        self.go = threading.Event()
        self.size = 0

    def append(self, entries: Sequence[bytes], side_write: SideWrite) -> list[Receipt]:
        if not self.submissions:
            self.submissions.append(list(entries))
            self.first_in.set()
            self.go.wait(10)
        else:
            self.submissions.append(list(entries))
        if self.fail:
            raise LedgerUnavailable("down")
        side_write(None)  # type: ignore[arg-type]
        first, self.size = self.size, self.size + len(entries)
        return [Receipt(first + i, bytes(32)) for i in range(len(entries))]

    def reserve(self, _cur: Any, usage: Any) -> None:
        new = set(usage[GEO]) - self.counted
        if len(self.counted) + len(new) > self.limit:
            raise BulkThresholdExceeded(
                "employer", "globalco", GEO, len(self.counted), len(new), self.limit
            )
        self.counted |= new


def race(ledger: FakeLedger, bulk: BulkCommits, names: list[str]) -> dict[str, Any]:
    """The first release holds the ledger; the others arrive while it does."""
    out: dict[str, Any] = {}

    def release(name: str) -> None:
        try:
            out[name] = bulk.append(KEY, [name.encode()], {GEO: [name, "shared"]}, ledger.reserve)
        except Exception as exc:
            out[name] = exc

    first = threading.Thread(target=release, args=(names[0],))
    first.start()
    assert ledger.first_in.wait(10)
    others = [threading.Thread(target=release, args=(n,)) for n in names[1:]]
    for t in others:
        t.start()
    deadline = threading.Event()
    while len(bulk._queues.get(KEY, [])) < len(names) - 1 and not deadline.wait(0.01):
        pass
    ledger.go.set()
    for t in [first, *others]:
        t.join(10)
    return out


def test_waiting_releases_go_as_one_submission_with_one_count() -> None:
    ledger = FakeLedger(limit=100)
    bulk = BulkCommits(ledger.append, wait_s=10)
    out = race(ledger, bulk, ["a", "b", "c", "d"])
    assert ledger.submissions == [[b"a"], [b"b", b"c", b"d"]]  # the three that waited: one
    assert [r.index for r in out["b"]] + [r.index for r in out["d"]] == [1, 3]
    assert ledger.counted == {"a", "b", "c", "d", "shared"}


def test_a_union_past_the_threshold_is_replayed_one_by_one() -> None:
    ledger = FakeLedger(limit=4)  # a + shared, then b and c fit, d does not
    bulk = BulkCommits(ledger.append, wait_s=10)
    out = race(ledger, bulk, ["a", "b", "c", "d"])
    assert ledger.submissions == [[b"a"], [b"b", b"c", b"d"], [b"b"], [b"c"], [b"d"]]
    assert isinstance(out["b"], list) and isinstance(out["c"], list)
    assert isinstance(out["d"], SideWriteFailed)
    assert isinstance(out["d"].error, BulkThresholdExceeded)
    assert ledger.counted == {"a", "shared", "b", "c"}


def test_a_failed_submission_fails_every_release_in_it() -> None:
    ledger = FakeLedger(limit=100, fail=True)
    bulk = BulkCommits(ledger.append, wait_s=10)
    out = race(ledger, bulk, ["a", "b", "c"])
    assert all(isinstance(out[n], LedgerUnavailable) for n in "abc")
    assert ledger.counted == set() and bulk._queues == {}


def test_a_release_that_waits_too_long_is_refused_and_never_submitted() -> None:
    ledger = FakeLedger(limit=100)
    bulk = BulkCommits(ledger.append, wait_s=0.2)
    first = threading.Thread(target=bulk.append, args=(KEY, [b"a"], {GEO: ["a"]}, ledger.reserve))
    first.start()
    assert ledger.first_in.wait(10)
    with pytest.raises(LedgerUnavailable):
        bulk.append(KEY, [b"late"], {GEO: ["late"]}, ledger.reserve)
    ledger.go.set()
    first.join(10)
    assert ledger.submissions == [[b"a"]] and bulk._queues == {}


def test_many_concurrent_releases_each_get_their_own_receipts() -> None:
    """Dozens of a principal's releases at once, in several rounds: every one is submitted
    exactly once and gets the receipts of its own entries, whoever led its group."""
    ledger = FakeLedger(limit=10_000)
    ledger.go.set()
    bulk = BulkCommits(ledger.append, wait_s=10)
    out: dict[str, Any] = {}

    def release(worker: int) -> None:
        for round_ in range(20):
            name = f"w{worker}-{round_}"
            out[name] = bulk.append(KEY, [name.encode()], {GEO: [name]}, ledger.reserve)

    threads = [threading.Thread(target=release, args=(w,)) for w in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    entries = [e for submission in ledger.submissions for e in submission]
    assert sorted(entries) == sorted(n.encode() for n in out)  # each once
    assert len(out) == 24 * 20 and bulk._queues == {}
    for name, (receipt,) in out.items():
        assert entries[receipt.index] == name.encode()
