"""The embedded default: one SQLite file under BASTION_HOME, WAL mode, fsync on commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bastion.errors import StoreUnavailable
from bastion.store.base import Cursor, Database


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise StoreUnavailable(f"database directory {self.path.parent} does not exist")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=60, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit survives power loss, which the ledger's acknowledgements rely on.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from None
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Cursor]:
        conn = self._conn()
        # IMMEDIATE takes the single write lock up front, which serializes all lock holders.
        conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
        try:
            cur = conn.cursor()
            yield cur  # type: ignore[misc]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and getattr(exc, "sqlite_errorname", "") in (
            "SQLITE_CONSTRAINT_PRIMARYKEY",
            "SQLITE_CONSTRAINT_UNIQUE",
        )

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    @property
    def description(self) -> str:
        return f"SQLite {self.path}"
