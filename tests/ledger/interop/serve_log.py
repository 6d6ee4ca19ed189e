"""Build a Bastion log of N entries (SQLite) and serve it with uvicorn on PORT; print the vkey."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from bastion.clock import SystemClock
from bastion.ledger import storage
from bastion.ledger.http import log_router
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import open_database


def main(n: int, port: int) -> None:
    db = open_database(f"sqlite:///{Path(tempfile.mkdtemp()) / 'log.db'}")
    storage.create_tables(db)
    log = Log(db, NoteSigner.generate("interop.example/log"), SystemClock(), background=False)
    for first in range(0, n, 10_000):
        # Grow in uneven steps, publishing as we go, so partial tiles of old sizes exist too.
        log.append_entries([f"entry {i}".encode() for i in range(first, min(n, first + 10_000))])
        log.publish()
    print(log.vkey, flush=True)
    app = FastAPI()
    app.include_router(log_router(log.reader))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
