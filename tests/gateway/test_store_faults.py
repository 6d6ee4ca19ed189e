"""A failing store is a 503 ``store-unavailable``, never a 500, and nothing is released.

The faults are real: SQLite runs out of room (``PRAGMA max_page_count`` pinned to the file's
size, the free pages filled: SQLITE_FULL, as on a full disk) under the bulk counter's write; a
PostgreSQL backend is terminated with ``pg_terminate_backend`` from another connection while
the ledger commit that counts the release (its bulk-counter side write) waits inside it for
the counter's lock. A full store is ``store-unavailable``; a commit whose connection died is
``ledger-unavailable`` (the ledger could not record): a 503 either way, nothing released.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from bastion.demo.platform import ingest, sample_user
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.store import Database

from .conftest import USERS, Connect

CTX = Context(purpose="dedupe accounts")
EXTRA = 150  # users beyond the fixture's: their first release adds many rows to the counter


class OpenSpy:
    def __init__(self, rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = rt.vault.open

        def spy(recorded: Any, *stored: Any) -> Any:
            self.calls += 1
            return original(recorded, *stored)

        monkeypatch.setattr(rt.vault, "open", spy)


def _store_failures(rt: Runtime) -> float:
    return rt.metrics.registry.get_sample_value("bastion_store_failures_total") or 0.0


def _ledger_failures(rt: Runtime) -> float:
    return rt.metrics.registry.get_sample_value("bastion_ledger_append_failures_total") or 0.0


def _fill(db: Database) -> None:
    """Make the SQLite database full for every connection the gateway holds: no page may be
    added (max_page_count pinned to its size), and filler rows take the free pages."""
    mine = sqlite3.connect(db.path, isolation_level=None)  # type: ignore[attr-defined]
    mine.execute("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)")
    pages = mine.execute("PRAGMA page_count").fetchone()[0]
    for conn in [*db._all, mine]:  # type: ignore[attr-defined]
        conn.execute(f"PRAGMA max_page_count = {pages}")
    for size in (4000, 1000, 100, 10):
        with pytest.raises(sqlite3.OperationalError, match="full"):
            while True:
                mine.execute("INSERT INTO test_filler VALUES (randomblob(?))", (size,))
    mine.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_full_sqlite_database_is_a_503_and_releases_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(runtime, "users", [sample_user(n) for n in range(USERS + 1, USERS + EXTRA + 1)])
    alice = connect("alice")
    # Warm-up: every thread the request path uses holds its connection (the ledger's
    # sequencer thread, where the bulk count is written, too), so each one gets the limit.
    alice.read("users", "u00001", fields=["user_id"], context=CTX)
    spy = OpenSpy(runtime, monkeypatch)
    size = runtime.ledger.size()
    _fill(runtime.db)
    ids = [f"u{n:05d}" for n in range(USERS + 1, USERS + EXTRA + 1)]
    with pytest.raises(GatewayError) as err:
        alice.batch_read("users", ids, fields=["user_id"], context=CTX)
    assert err.value.status == 503, err.value
    assert err.value.kind == "store-unavailable"
    assert err.value.message
    assert spy.calls == 0
    assert runtime.ledger.size() == size
    assert _store_failures(runtime) == 1


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_postgresql_backend_killed_mid_request_is_a_503(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = connect("alice")
    alice.read("users", "u00001", fields=["user_id"], context=CTX)
    spy = OpenSpy(runtime, monkeypatch)
    size = runtime.ledger.size()
    # Hold the bulk counter's lock for alice's employer, so the gateway's reservation waits
    # inside the ledger commit's transaction; terminate that backend there; then let go.
    ours = {c.info.backend_pid for c in runtime.db._all if not c.closed}  # type: ignore[attr-defined]
    holder = psycopg.connect(runtime.db.dsn, autocommit=False)  # type: ignore[attr-defined]
    result: dict[str, Any] = {}
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("bulk:custodian"),))
        holder_pid = holder.info.backend_pid

        def request() -> None:
            try:
                alice.read("users", "u00002", fields=["user_id"], context=CTX)
                result["ok"] = True
            except GatewayError as exc:
                result["error"] = exc
            except httpx.HTTPError as exc:  # pragma: no cover - reported below
                result["transport"] = exc

        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 30
        waiting: list[int] = []
        while not waiting and time.monotonic() < deadline:
            rows = holder.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (holder_pid,),
            ).fetchall()
            # Only this gateway's backends: other tests may share the server.
            waiting = [int(r[0]) for r in rows if int(r[0]) in ours]
            time.sleep(0.02)
        assert len(waiting) == 1, "the gateway's bulk reservation never waited on the lock"
        holder.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
    finally:
        holder.rollback()
        holder.close()
    thread.join(timeout=60)
    assert "error" in result, result
    err = result["error"]
    assert err.status == 503 and err.kind == "ledger-unavailable", err
    assert spy.calls == 0
    assert runtime.ledger.size() == size
    assert _ledger_failures(runtime) == 1
    # The broken connection is replaced: the next request is served.
    out = alice.read("users", "u00002", fields=["user_id"], context=CTX)
    assert out.records[0].values == {"user_id": "u00002"}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_rollback_on_a_killed_connection_is_a_store_failure(db: Database) -> None:
    """The other way a broken connection surfaces: the transaction's body fails for its own
    reason, and the rollback on the dead connection raises instead. The gateway maps that to
    the same 503."""
    from bastion.errors import BastionError
    from bastion.gateway.errors import is_store_failure, status_for, store_unavailable

    killer = psycopg.connect(db.dsn, autocommit=True)  # type: ignore[attr-defined]
    try:
        with pytest.raises(Exception) as raised, db.transaction() as cur:
            pid = cur.execute("SELECT pg_backend_pid()").fetchone()
            assert pid is not None
            killer.execute("SELECT pg_terminate_backend(%s)", (pid[0],))
            time.sleep(0.2)
            raise LookupError("the body's own failure")
    finally:
        killer.close()
    exc = raised.value
    assert not isinstance(exc, LookupError), "the rollback's error replaces the body's"
    if isinstance(exc, BastionError):
        assert status_for(exc) == (503, "store-unavailable")
    else:
        assert is_store_failure(exc), type(exc)
        err = store_unavailable(exc)
        assert err.status == 503 and err.kind == "store-unavailable"
