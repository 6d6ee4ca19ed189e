"""Fixtures for the log's tests: a log on the `db` fixture, and a real uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from bastion.clock import FixedClock
from bastion.ledger import storage
from bastion.ledger.http import log_router
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Database

ORIGIN = "bastion.test/log"


class ServerThread:
    """A real uvicorn server on 127.0.0.1 and a random free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def app_for(log: Log) -> FastAPI:
    app = FastAPI()
    app.include_router(log_router(log.reader))
    return app


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


LogFactory = Callable[..., Log]


@pytest.fixture
def make_log(db: Database, clock: FixedClock, signer: NoteSigner) -> Iterator[LogFactory]:
    """Logs on the `db` fixture (SQLite and PostgreSQL); background publishing off by default."""
    logs: list[Log] = []
    storage.create_tables(db)

    def make(*, database: Database | None = None, **kwargs: Any) -> Log:
        kwargs.setdefault("background", False)
        log = Log(database or db, kwargs.pop("signer", signer), clock, **kwargs)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


@pytest.fixture
def log(make_log: LogFactory) -> Log:
    return make_log()
