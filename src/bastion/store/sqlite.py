"""The embedded default: one SQLite file under BASTION_HOME, WAL mode, fsync on commit."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bastion.errors import StoreUnavailable
from bastion.home import Bounds
from bastion.store.base import Cursor, Database


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, *, bounds: Bounds | None = None) -> None:
        self.path = Path(path)
        self.bounds = bounds or Bounds()
        if not self.path.parent.exists():
            raise StoreUnavailable(f"database directory {self.path.parent} does not exist")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # timeout: how long a writer waits for another's write lock (the busy handler).
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    timeout=self.bounds.sqlite_busy_timeout_s,
                    check_same_thread=False,
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
        # Waiting for it is bounded by the busy timeout; past that the store is unavailable.
        try:
            conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite database {self.path}: {exc}") from None
        try:
            cur = conn.cursor()
            yield cur  # type: ignore[misc]
        except BaseException:
            self._rollback(conn)  # the error that got here is the news, not the rollback's
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # Busy past the timeout (a reader's lock), or the disk refused the write.
                self._rollback(conn)
                raise StoreUnavailable(
                    f"SQLite database {self.path}: commit failed: {exc}"
                ) from None

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back; a connection that cannot is dropped (this thread opens a fresh one)."""
        if not conn.in_transaction:  # SQLite already rolled back (e.g. after SQLITE_FULL)
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            if getattr(self._local, "conn", None) is conn:
                self._local.conn = None
            with self._guard:
                if conn in self._all:
                    self._all.remove(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

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
