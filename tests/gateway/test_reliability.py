"""Reliability: `bastion serve` SIGKILLed repeatedly under load. Every response the client
received has its ledger entry, and the log verifies (an auditor's LogVerifier over HTTP, and
a full recomputation from storage)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS
from bastion.events import AccessDecision, decode_event
from bastion.gateway.runtime import own_issuer
from bastion.ledger.log import open_log
from bastion.ledger.merkle import leaf_hash
from bastion.ledger.verifier import LogVerifier

from .served import ServedHome, Server, served_home

KILLS = 4
CLIENTS = 4
USERS = 30


@pytest.fixture
def served(
    tmp_path: Path, db_url_factory: Callable[[], tuple[str, str | None]]
) -> Iterator[ServedHome]:
    with served_home(tmp_path, db_url_factory, users=USERS, principals=["kenji"]) as out:
        yield out


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_access(
    served: ServedHome, tmp_path: Path
) -> None:
    home, db, env = served
    token = own_issuer(home, SystemClock()).issue("kenji", PRINCIPALS["kenji"])
    # kenji sees account ids only as pseudonyms, so he names records by their tokens.
    from bastion.vault import open_vault

    vault = open_vault(home, db, SystemClock())
    try:
        pseudonyms = [vault.pseudonym_of(f"u{1 + i:05d}") for i in range(USERS)]
    finally:
        vault.close()
    server = Server(home.path, env, tmp_path / "server.log")
    acknowledged: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def drive(worker: int) -> None:
        n = worker
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                n += CLIENTS
                body = {
                    "record_id": pseudonyms[n % USERS],
                    "fields": ["user_id", "language"],
                    "context": {"purpose": "reliability drill"},
                }
                try:
                    r = http.post(
                        server.url + "/datasets/users/read",
                        json=body,
                        headers={
                            "authorization": f"Bearer {token}",
                            "x-request-id": f"rel-{worker}-{n:08d}",
                        },
                    )
                except httpx.HTTPError:
                    time.sleep(0.02)  # the server is down: nothing was acknowledged
                    continue
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(r.json())
                elif r.status_code != 503:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    server.start()
    threads = [threading.Thread(target=drive, args=(w,), daemon=True) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            time.sleep(1.5)
            server.kill()
            time.sleep(0.2)
            server.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    try:
        assert errors == []
        assert len(acknowledged) > 50, "the load produced too few responses to mean anything"
        # Every acknowledged response has its entry: same index, same leaf hash, same request.
        log = open_log(home, db, SystemClock(), background=False)
        try:
            size = log.size()
            for body in acknowledged:
                index = body["receipt"]["index"]
                assert index < size
                entry = log.entry(index)
                assert leaf_hash(entry).hex() == body["receipt"]["leaf_hash"]
                event = decode_event(entry)
                assert isinstance(event, AccessDecision)
                assert event.request_id == body["request_id"]
                assert event.released_records == [body["records"][0]["record_id"]]
            report = log.verify_storage()
            assert report.tree_size == size
            vkey = log.vkey
        finally:
            log.close()
        # An auditor verifies the whole log over HTTP from the restarted server.
        deadline = time.monotonic() + 10
        with LogVerifier(server.url, vkey, tmp_path / "auditor") as verifier:
            result = verifier.verify()
            while result.size < size and time.monotonic() < deadline:
                time.sleep(0.3)
                result = verifier.verify()
        assert result.size >= size
    finally:
        server.stop()
