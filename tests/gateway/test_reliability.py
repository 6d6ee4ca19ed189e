"""Reliability: `bastion serve` SIGKILLed repeatedly under load. Every response the client
received has its ledger entry, and the log verifies (an auditor's LogVerifier over HTTP, and
a full recomputation from storage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS, initialize_all, sample_user
from bastion.events import AccessDecision, decode_event
from bastion.gateway.runtime import own_issuer
from bastion.gateway.server import free_port
from bastion.home import Home
from bastion.ledger.log import open_log
from bastion.ledger.merkle import leaf_hash
from bastion.ledger.verifier import LogVerifier
from bastion.store import Database, open_database
from bastion.vault import open_vault

KILLS = 4
CLIENTS = 4
USERS = 30


def _dsn(url: str, schema: str | None) -> str:
    return url if schema is None else f"{url}?options=-csearch_path%3D{schema}"


class Server:
    def __init__(self, home: Path, env: dict[str, str], log_file: Path) -> None:
        self.home, self.env, self.log_file = home, env, log_file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bastion.cli.main",
                    "serve",
                    "--home",
                    str(self.home),
                    "--port",
                    str(self.port),
                    "--sweep-seconds",
                    "0",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_file.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def served_home(
    tmp_path: Path, db_url_factory: Callable[[], tuple[str, str | None]]
) -> Iterator[tuple[Home, Database, dict[str, str]]]:
    url, schema = db_url_factory()  # type: ignore[operator]
    env = {**os.environ}
    home_path = tmp_path / "home"
    if url.startswith("sqlite:///"):
        env.pop("BASTION_DATABASE_URL", None)
        home = init_home(home_path)
        db = open_database(home.database_url)
    else:
        env["BASTION_DATABASE_URL"] = _dsn(url, schema)
        os.environ["BASTION_DATABASE_URL"] = env["BASTION_DATABASE_URL"]
        try:
            home = init_home(home_path)
        finally:
            del os.environ["BASTION_DATABASE_URL"]
        db = open_database(url, schema=schema)
    clock = SystemClock()
    initialize_all(home, db, clock)
    vault = open_vault(home, db, clock)
    vault.ingest_rows("users", enumerate((sample_user(n) for n in range(1, USERS + 1)), 1))
    vault.provider.close()
    from bastion.policy.registry import PrincipalEntry, PrincipalRegistry

    k = PRINCIPALS["kenji"]
    PrincipalRegistry(db, clock).register(
        PrincipalEntry(
            issuer="bastion",
            sub="kenji",
            roles=(k["role"],),
            employer=k["employer"],
            employer_country=k["employer_country"],
            max_clearance=k["clearance"],
        )
    )
    yield home, db, env
    db.close()


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_access(
    served_home: tuple[Home, Database, dict[str, str]], tmp_path: Path
) -> None:
    home, db, env = served_home
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
