"""Fixtures for release-assurance tests: keys, a policy, a sample repository."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from release_helpers import (
    ALICE,
    AUTHOR,
    BOB,
    BUILDER_ID,
    CAROL,
    REPO_NAME,
    REPO_URI,
    T0,
    Keys,
    RunningWitness,
    holder,
)

from bastion.clock import FixedClock, SystemClock
from bastion.demo.release_sample import init_sample_repo
from bastion.ledger import storage
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.ledger.publish import WitnessEndpoint
from bastion.ledger.witness import Witness, witness_app
from bastion.releases.policy import ReleasePolicy, RepositoryRule
from bastion.store import Database, open_database


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(Ed25519PrivateKey.generate() for _ in range(8)))


@pytest.fixture
def policy(keys: Keys) -> ReleasePolicy:
    return ReleasePolicy(
        repositories=[RepositoryRule(name=REPO_NAME, uri=REPO_URI, required_reviewers=2)],
        reviewers=[
            holder(ALICE.email, keys.alice),
            holder(BOB.email, keys.bob),
            holder(CAROL.email, keys.carol),
            # Dana writes code and may review others' code, never her own.
            holder(AUTHOR.email, keys.dana),
        ],
        builders=[
            holder(BUILDER_ID, keys.builder),
            holder("https://other-builder.example", keys.other_builder),
        ],
    )


@pytest.fixture
def sample_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "sample-app"
    commit = init_sample_repo(repo, author=AUTHOR, when=T0)
    return repo, commit


# --- real witnesses (C2SP tlog-witness over HTTP) for end-to-end tests ---------------------------


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
