"""A real small log for end-to-end tests: three C2SP tlog-witnesses over HTTP (uvicorn) and
the real ``Log`` on the ``db`` fixture with a quorum of 2. Shared by the release and egress
tests; a conftest imports the fixtures (``from witnessed_log import real_log, witness_servers``).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import FixedClock, SystemClock
from bastion.ledger import storage
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.ledger.publish import WitnessEndpoint
from bastion.ledger.witness import Witness, witness_app
from bastion.store import Database, open_database


@dataclass
class RunningWitness:
    url: str
    witness: Witness


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def witness_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningWitness]]:
    """Three independent witnesses (own key, own SQLite state) serving add-checkpoint.

    They follow whichever log vkeys ``follow`` registers, so each test can use its own log.
    """
    base = tmp_path_factory.mktemp("witnesses")
    running: list[tuple[uvicorn.Server, threading.Thread, Database]] = []
    out: list[RunningWitness] = []
    for i in range(3):
        wdb = open_database(f"sqlite:///{base / f'w{i}.db'}")
        signer = CosignatureSigner(f"witness{i}.test", Ed25519PrivateKey.generate())
        witness = Witness(wdb, signer, {}, SystemClock())
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(witness_app(witness), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread, wdb))
        out.append(RunningWitness(f"http://127.0.0.1:{port}", witness))
    deadline = time.monotonic() + 20
    while not all(s.started for s, _, _ in running):
        if time.monotonic() > deadline:
            raise RuntimeError("witness servers did not start")
        time.sleep(0.02)
    yield out
    for server, thread, wdb in running:
        server.should_exit = True
        thread.join(timeout=10)
        wdb.close()


@pytest.fixture
def real_log(
    db: Database, witness_servers: list[RunningWitness], clock: FixedClock
) -> Iterator[Log]:
    """The real Log on the test database, with 3 real witnesses and a quorum of 2."""
    origin = f"log.test.example/{uuid.uuid4().hex[:10]}"
    signer = NoteSigner(origin, Ed25519PrivateKey.generate())
    for w in witness_servers:
        w.witness.logs[origin] = [signer.verifier()]
    endpoints = [WitnessEndpoint(w.url, w.witness.signer.verifier()) for w in witness_servers]
    storage.create_tables(db)
    log = Log(db, signer, clock, witnesses=endpoints, quorum=2, background=False)
    yield log
    log.close()
