"""The bulk count rides in the ledger commit that records the release (28 CFR 202.205).

A bulk-counted read waits for one durable commit: the ``AccessDecision`` entries and the
counter's rows become durable together (``BulkCounter.reserve_in``, the commit's side write),
and a count that would cross a threshold leaves the entries out, records the refusal, and
releases nothing. These tests try to break the threshold: threads of one gateway, two
sequencers on one database, and two real processes racing to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bastion.catalog import SensitiveCategory
from bastion.clock import FixedClock, SystemClock
from bastion.events import AccessDecision, decode_event
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.policy import BulkCounter, BulkThresholdExceeded, BulkThresholds
from bastion.policy.thresholds import migrate_thresholds
from bastion.store import Cursor, Database, open_database

from .conftest import Connect

GEO = SensitiveCategory.PRECISE_GEOLOCATION
CPI = SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS
CTX = Context(purpose="dedupe accounts")
CHILD = str(Path(__file__).with_name("_bulk_child.py"))


def limited(runtime: Runtime, limit: int) -> BulkCounter:
    limits = {CPI: limit}
    runtime.bulk = BulkCounter(
        runtime.db, runtime.clock, BulkThresholds(employer=limits, principal=limits)
    )
    return runtime.bulk


def test_a_counted_read_is_counted_in_its_ledger_commit(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = limited(runtime, 100)
    where: list[str] = []
    reserve_in = counter.reserve_in

    def spy(cur: Cursor, *args: object, **kw: object) -> object:
        where.append(threading.current_thread().name)
        return reserve_in(cur, *args, **kw)  # type: ignore[arg-type]

    def alone(*args: object, **kw: object) -> object:
        raise AssertionError("a release is never counted in a transaction of its own")

    monkeypatch.setattr(counter, "reserve_in", spy)
    monkeypatch.setattr(counter, "check_and_reserve", alone)
    sequencer = runtime.ledger.sequencer
    before = sequencer.batches
    out = connect("alice").read("users", "u00001", fields=["user_id"], context=CTX)
    assert out.records[0].values == {"user_id": "u00001"}
    assert where == ["ledger-sequencer"]  # inside the commit, on the sequencer's thread
    assert sequencer.batches == before + 1  # one durable commit for entry and count
    assert counter.usage("employer", "custodian") == {CPI: 1}


def test_a_refused_count_leaves_the_release_out_and_records_the_refusal(
    runtime: Runtime, connect: Connect
) -> None:
    counter = limited(runtime, 2)
    alice = connect("alice")
    alice.batch_read("users", ["u00001", "u00002"], fields=["user_id"], context=CTX)
    size = runtime.ledger.size()
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00003", fields=["user_id"], context=CTX)
    assert err.value.status == 429 and err.value.kind == "bulk-threshold"
    assert err.value.receipt is not None
    # One entry more: the refusal. The allowing decision it would have been is not in the log.
    assert runtime.ledger.size() == size + 1 == err.value.receipt.index + 1
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert not event.released_records
    assert counter.usage("employer", "custodian") == {CPI: 2}  # nothing counted either


def test_threads_of_one_gateway_never_overshoot(runtime: Runtime, connect: Connect) -> None:
    counter = limited(runtime, 8)
    alice = connect("alice")
    outcomes: list[str] = []
    guard = threading.Lock()

    def read(n: int) -> None:
        try:
            alice.batch_read(
                "users",
                [f"u{k:05d}" for k in range(2 * n + 1, 2 * n + 3)],
                fields=["user_id"],
                context=CTX,
            )
            outcome = "ok"
        except GatewayError as exc:
            outcome = exc.kind
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 4 and outcomes.count("bulk-threshold") == 4, outcomes
    assert counter.usage("employer", "custodian") == {CPI: 8}


def _tables(db: Database) -> None:
    storage.create_tables(db)
    migrate_thresholds(db)


def _racer(log: Log, counter: BulkCounter, tag: str, tries: int, results: list[str]) -> None:
    for i in range(tries):
        entry = f"{tag}-{i}"
        subjects = [f"{entry}/{k}" for k in range(4)]

        def reserve(cur: Cursor, subjects: list[str] = subjects) -> None:
            counter.reserve_in(cur, f"p-{tag}", "racers", {GEO: subjects})

        try:
            log.append_entries([entry.encode()], side_write=reserve)
            results.append(f"OK {entry}")
        except BulkThresholdExceeded:
            results.append(f"REFUSED {entry}")


def _thresholds(limit: int) -> BulkThresholds:
    return BulkThresholds(employer={GEO: limit}, principal={GEO: 1_000_000})


def test_two_sequencers_on_one_database_never_overshoot(db: Database) -> None:
    """Two logs on one database, as two gateway processes have: each commits under the
    sequencer's lock and counts under the employer's, so the total stays at the limit."""
    _tables(db)
    clock = FixedClock()
    signer = NoteSigner.generate("bastion.test/log")
    logs = [Log(db, signer, clock, background=False) for _ in range(2)]
    counter = BulkCounter(db, clock, _thresholds(40))
    results: list[str] = []
    threads = [
        threading.Thread(target=_racer, args=(logs[n % 2], counter, f"t{n}", 5, results))
        for n in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sorted(r.split()[1] for r in results if r.startswith("OK"))
    assert len(ok) == 10 and len(results) == 30
    assert counter.usage("employer", "racers") == {GEO: 40}
    logged = sorted(e.decode() for _, e in logs[0].entries(0, logs[0].size()))
    assert logged == ok  # every counted release is in the log, and no refused one
    for log in logs:
        log.close()


@pytest.mark.timeout(120)
def test_two_processes_racing_to_the_threshold_never_overshoot(db_url_factory: object) -> None:
    url, schema = db_url_factory()  # type: ignore[operator]
    db = open_database(url, schema=schema)
    _tables(db)
    signer = NoteSigner.generate("bastion.test/log")
    env = {**os.environ, "LEDGER_TEST_SKEY": signer.skey}
    procs = [
        subprocess.Popen(
            [sys.executable, CHILD, url, schema or "-", f"proc{k}", "2", "8", "40"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(2)
    ]
    lines: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err[-2000:]
        lines += out.splitlines()
    try:
        ok = sorted(line.split()[2] for line in lines if line.startswith("OK "))
        refused = [line for line in lines if line.startswith("REFUSED ")]
        assert len(ok) == 10 and len(refused) == 22, lines  # 2 x 2 x 8 tries of 4 subjects
        counter = BulkCounter(db, SystemClock(), _thresholds(40))  # the children's clock
        assert counter.usage("employer", "racers") == {GEO: 40}
        log = Log(db, signer, SystemClock(), background=False)
        assert sorted(e.decode() for _, e in log.entries(0, log.size())) == ok
        log.close()
    finally:
        db.close()
