"""Reliability of writes: `bastion serve` SIGKILLed repeatedly while services write.

Two event-service clients insert batches of events (each batch under an Idempotency-Key,
retried with the same key until it is answered) and two profile-service clients change users'
languages, while the server is killed with SIGKILL and restarted, again and again.
Afterwards:

* every acknowledged write (a 200 the client received) has its ``data.write`` entry at the
  receipt's index (or, for a replay answered before its receipt was stored, at its leaf
  hash), naming the versions the client was given;
* every record it wrote is in the vault at (at least) that version, with its change row;
* nothing is in the vault without its entry, and no entry names a write that is not there:
  the change feed's rows (ingest's aside) and the entries' (dataset, record, version) sets
  are equal, and each record's stored version is its newest change;
* the log verifies, from storage and for an auditor over HTTP.

Writes the client never saw answered may or may not have happened; either is fine.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS, sample_event
from bastion.events import DataWrite, decode_event
from bastion.gateway.runtime import own_issuer
from bastion.ledger.log import open_log
from bastion.ledger.merkle import leaf_hash
from bastion.ledger.verifier import LogVerifier

from .served import ServedHome, Server, served_home

KILLS = 5
USERS = 30
EVENT_CLIENTS = 2
PROFILE_CLIENTS = 2
EVENTS_PER_BATCH = 10
LANGUAGES = ["en-US", "fr-FR", "de-DE", "es-ES", "ja-JP", "pt-BR"]


@pytest.fixture
def served(
    tmp_path: Path, db_url_factory: Callable[[], tuple[str, str | None]]
) -> Iterator[ServedHome]:
    with served_home(
        tmp_path,
        db_url_factory,
        users=USERS,
        principals=["events-service", "profile-service"],
    ) as out:
        yield out


class Load:
    """The clients: what each got acknowledged, and anything unexpected."""

    def __init__(self, server: Server, tokens: dict[str, str]) -> None:
        self.server, self.tokens = server, tokens
        self.acknowledged: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _headers(self, who: str, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[who]}", **extra}

    def _answered(self, r: httpx.Response) -> bool:
        """True for a 200 (kept); a 503 is a refusal to retry; anything else is an error."""
        if r.status_code == 200:
            with self.lock:
                self.acknowledged.append(r.json())
            return True
        if r.status_code != 503:
            with self.lock:
                self.errors.append(f"{r.request.method} {r.status_code} {r.text[:300]}")
        return False

    def events(self, worker: int) -> None:
        batch = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                base = (worker + 1) * 1_000_000 + batch * EVENTS_PER_BATCH
                records = [
                    sample_event(base + i, 1 + (base + i) % USERS) for i in range(EVENTS_PER_BATCH)
                ]
                key = f"ev-{worker}-{batch}"
                # The same batch under the same key until it is answered: after a crash the
                # retry either replays a write that did commit or makes it now, never twice.
                while not self.stop.is_set():
                    try:
                        r = http.post(
                            self.server.url + "/datasets/events/records",
                            json={"records": records, "mode": "insert"},
                            headers=self._headers("events-service", **{"idempotency-key": key}),
                        )
                    except httpx.HTTPError:
                        time.sleep(0.05)  # the server is down: nothing was acknowledged
                        continue
                    if self._answered(r) or r.status_code != 503:
                        break
                batch += 1

    def profiles(self, worker: int) -> None:
        # Each client changes only its own users, so two clients never race on a record.
        mine = [n for n in range(1, USERS + 1) if n % PROFILE_CLIENTS == worker]
        k = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                k += 1
                user = mine[k % len(mine)]
                try:
                    r = http.patch(
                        self.server.url + f"/datasets/users/records/u{user:05d}",
                        json={"fields": {"language": LANGUAGES[k % len(LANGUAGES)]}},
                        headers=self._headers("profile-service"),
                    )
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                self._answered(r)


@pytest.mark.slow
def test_sigkill_under_write_load_loses_no_acknowledged_write(
    served: ServedHome, tmp_path: Path
) -> None:
    home, db, env = served
    issuer = own_issuer(home, SystemClock())
    tokens = {n: issuer.issue(n, PRINCIPALS[n]) for n in ("events-service", "profile-service")}
    server = Server(home.path, env, tmp_path / "server.log")
    load = Load(server, tokens)
    rng = random.Random(13)
    server.start()
    threads = [
        *(threading.Thread(target=load.events, args=(w,)) for w in range(EVENT_CLIENTS)),
        *(threading.Thread(target=load.profiles, args=(w,)) for w in range(PROFILE_CLIENTS)),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 2.0))  # a different moment of the load each round
            server.kill()
            time.sleep(0.2)
            server.start()
        time.sleep(1.0)
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=15)
    try:
        assert load.errors == []
        ops = [body["op"] for body in load.acknowledged]
        assert ops.count("insert") >= 10 and ops.count("update") >= 10, (
            "the load produced too few acknowledged writes to mean anything"
        )
        log = open_log(home, db, SystemClock(), background=False)
        try:
            size = log.size()
            entries = dict(log.entries(0, size))
            report = log.verify_storage()
            vkey = log.vkey
        finally:
            log.close()
        assert report.tree_size == size
        at_leaf = {leaf_hash(e).hex(): i for i, e in entries.items()}
        writes = {i: ev for i, e in entries.items() if isinstance(ev := decode_event(e), DataWrite)}
        stored = {
            (str(ds), str(key)): int(v)
            for ds, key, v in db.query("SELECT dataset, record_key, version FROM vault_records")
        }
        changes = {
            (str(ds), str(key), int(v)): str(op)
            for ds, key, v, op in db.query(
                "SELECT dataset, record_key, version, op FROM vault_changes"
            )
        }
        # 1. Every acknowledged write has its entry, and its records are stored.
        for body in load.acknowledged:
            receipt = body.get("receipt")
            index = receipt["index"] if receipt else at_leaf.get(body["leaf_hash"])
            assert index is not None and index < size, body
            assert leaf_hash(entries[index]).hex() == body["leaf_hash"]
            event = writes[index]
            assert (event.request_id, event.dataset) == (body["request_id"], body["dataset"])
            assert [r.version for r in event.records] == [r["version"] for r in body["records"]]
            for rec in event.records:
                key = (event.dataset, rec.record)
                assert key in stored, f"acknowledged {key} is not in the vault"
                assert stored[key] >= rec.version
                assert (event.dataset, rec.record, rec.version) in changes
                if event.dataset == "events":
                    assert stored[key] == 1  # inserted once, never again (idempotency key)
        # 2. Nothing without its entry, and no entry without its write.
        written = {(ev.dataset, r.record, r.version) for ev in writes.values() for r in ev.records}
        ingested = {c for c in changes if c[0] == "users" and c[2] == 1}
        assert all(changes[k] == "insert" for k in ingested) and len(ingested) == USERS
        assert set(changes) - ingested == written
        newest: dict[tuple[str, str], int] = {}
        for ds, rkey, v in changes:
            newest[(ds, rkey)] = max(v, newest.get((ds, rkey), 0))
        assert stored == newest
        # 3. An auditor verifies the whole log over HTTP from the restarted server.
        deadline = time.monotonic() + 10
        with LogVerifier(server.url, vkey, tmp_path / "auditor") as verifier:
            result = verifier.verify()
            while result.size < size and time.monotonic() < deadline:
                time.sleep(0.3)
                result = verifier.verify()
        assert result.size >= size
    finally:
        server.stop()
