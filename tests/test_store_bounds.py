"""Every wait on the database is bounded (``[bounds]``, ``home.Bounds``): the settings, the
per-connection PostgreSQL limits and SQLite's busy wait."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.errors import ConfigError, StoreUnavailable
from bastion.home import Bounds, settings_from
from bastion.store import open_database
from bastion.store.postgres import PostgresDatabase, bounded_conninfo

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def test_bounds_are_typed_settings_with_env_overrides() -> None:
    assert settings_from({}, {}).bounds == Bounds()
    assert Bounds().revocation_check_s <= 10
    s = settings_from(
        {"bounds": {"statement_timeout_s": 3, "keepalives_count": 5}},
        {"BASTION_BOUNDS_STATEMENT_TIMEOUT_S": "2.5", "BASTION_BOUNDS_REVOCATION_CHECK_S": "1"},
    )
    assert s.bounds.statement_timeout_s == 2.5  # the environment wins
    assert s.bounds.keepalives_count == 5 and isinstance(s.bounds.keepalives_count, int)
    assert s.bounds.revocation_check_s == 1.0
    assert s.bounds.round_trip_s == 2.5 + Bounds().network_grace_s
    assert s.bounds.request_s == max(
        s.bounds.connect_timeout_s, s.bounds.round_trip_s, s.bounds.commit_wait_s
    )
    for bad in ({"statement_timeout_s": 0}, {"lock_timeout_s": "soon"}, {"nap_s": 1}):
        with pytest.raises(ConfigError):
            settings_from({"bounds": bad}, {})
    with pytest.raises(ConfigError):
        settings_from({}, {"BASTION_BOUNDS_COMMIT_WAIT_S": "-1"})


def test_conninfo_keeps_given_options_and_adds_the_bounds() -> None:
    b = Bounds(statement_timeout_s=3, lock_timeout_s=2, idle_in_transaction_s=1.5)
    info = bounded_conninfo(f"{PG_URL}?options=-cwork_mem%3D8MB", b, "t_x")
    assert "work_mem=8MB" in info
    for part in (
        "statement_timeout=3000",
        "lock_timeout=2000",
        "idle_in_transaction_session_timeout=1500",
        "search_path=t_x",
        "keepalives=1",
        f"tcp_user_timeout={int(b.tcp_user_timeout_s * 1000)}",
        "connect_timeout=5",
    ):
        assert part in info


@pytest.fixture
def backend() -> str:
    return "postgresql"  # db_url_factory here: the PostgreSQL session settings


def test_postgres_sessions_carry_the_bounds(
    db_url_factory: Callable[[], tuple[str, str | None]],
) -> None:
    url, schema = db_url_factory()
    b = Bounds(statement_timeout_s=3, lock_timeout_s=2, idle_in_transaction_s=1.5)
    db = open_database(url, schema=schema, bounds=b)
    try:
        assert isinstance(db, PostgresDatabase) and db.bounds == b
        shown = {
            name: db.query(f"SHOW {name}")[0][0]
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        }
        assert shown == {
            "statement_timeout": "3s",
            "lock_timeout": "2s",
            "idle_in_transaction_session_timeout": "1500ms",
        }
        conn = db.connect()
        try:
            params = conn.info.get_parameters()
            assert params["keepalives"] == "1"
            assert params["keepalives_idle"] == str(b.keepalives_idle_s)
            assert params["tcp_user_timeout"] == str(int(b.tcp_user_timeout_s * 1000))
        finally:
            conn.close()
        # A statement past statement_timeout is the store's 503, not a hang or a driver error.
        with pytest.raises(StoreUnavailable), db.transaction() as cur:
            cur.execute("SELECT pg_sleep(5)")
        assert db.query("SELECT 1") == [(1,)]  # and the database handle carries on
    finally:
        db.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.timeout(30)
def test_sqlite_waits_for_the_write_lock_only_as_long_as_bounded(tmp_path: Path) -> None:
    path = tmp_path / "bastion.db"
    db = open_database(f"sqlite:///{path}", bounds=Bounds(sqlite_busy_timeout_s=0.3))
    db.query("SELECT 1")
    holder = _hold_write_lock(path)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"), db.transaction(lock="x"):
            pass
        assert time.monotonic() - started < 10  # was 60 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.transaction(lock="x") as cur:  # free again: works as before
        assert cur.execute("SELECT 1").fetchone() == (1,)
    db.close()
