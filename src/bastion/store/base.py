"""The storage interface: transactions, one named lock for single-writer sections, migrations."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from bastion.errors import BastionError
from bastion.home import Bounds

Params = Sequence[Any]
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_SAVEPOINT = "bastion_copy_rows"


class DuplicateKey(BastionError):
    """A bulk insert met a row whose unique key is already taken; none of its rows went in."""


def check_identifiers(table: str, columns: Sequence[str]) -> None:
    """Table and column names are interpolated into SQL, so only plain names are allowed."""
    for name in (table, *columns):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")


class Cursor(Protocol):
    """The subset of a DB-API cursor that Bastion uses, with ``?`` placeholders."""

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, seq: Sequence[Params]) -> None: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...

    @property
    def rowcount(self) -> int: ...


class Database(ABC):
    """A database that Bastion's parts share. Thread-safe: each thread gets its own connection."""

    dialect: str
    # True where copy_rows mostly waits on a server process (PostgreSQL): a caller may then
    # run it in a worker thread and keep working. SQLite writes in this process, holding the
    # GIL, so there it would only get in the way.
    bulk_load_in_background: bool = False
    # How long its waits may last (connect, statements, locks, SQLite's busy wait) and how long
    # callers wait for commits made on their behalf (see home.Bounds).
    bounds: Bounds = Bounds()

    @abstractmethod
    def transaction(self, lock: str | None = None) -> AbstractContextManager[Cursor]:
        """Open a transaction; commit on success, roll back on any exception.

        ``lock`` names a critical section (e.g. the log's sequencer). Holders of the same
        name are serialized across processes until the transaction ends.
        """

    def lock_in(self, cur: Cursor, name: str) -> None:
        """Take named lock `name` inside an open transaction (one opened with a lock of its
        own), until it ends: for work that runs inside another's transaction, such as a side
        write in the ledger's commit. SQLite needs nothing: a transaction opened with a lock
        already excludes every other writer of the file."""
        return None

    def migrate(self, component: str, statements: Sequence[str]) -> None:
        """Run a component's idempotent DDL (``CREATE ... IF NOT EXISTS``)."""
        with self.transaction(lock=f"migrate:{component}") as cur:
            for stmt in statements:
                cur.execute(self.render_ddl(stmt))

    def render_ddl(self, stmt: str) -> str:
        blob, integer = ("BLOB", "INTEGER") if self.dialect == "sqlite" else ("BYTEA", "BIGINT")
        # An ever-growing key whose order is insertion order: SQLite never reuses a rowid
        # under AUTOINCREMENT, and a PostgreSQL identity only grows.
        serial = (
            "INTEGER PRIMARY KEY AUTOINCREMENT"
            if self.dialect == "sqlite"
            else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        )
        return stmt.replace("{blob}", blob).replace("{int}", integer).replace("{serial}", serial)

    def add_columns(self, component: str, table: str, columns: Sequence[tuple[str, str]]) -> None:
        """Add each ``(name, type-and-default DDL)`` column that ``table`` lacks.

        ``migrate`` runs only idempotent DDL, and SQLite has no ``ADD COLUMN IF NOT EXISTS``,
        so the table's columns are read first; the lock keeps two processes from racing."""
        check_identifiers(table, [name for name, _ in columns])
        with self.transaction(lock=f"migrate:{component}") as cur:
            have = set(self._column_names(cur, table))
            for name, ddl in columns:
                if name not in have:
                    cur.execute(self.render_ddl(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))

    def _column_names(self, cur: Cursor, table: str) -> list[str]:
        if self.dialect == "sqlite":
            return [str(r[1]) for r in cur.execute(f"PRAGMA table_info({table})").fetchall()]
        rows = cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def copy_rows(
        self, cur: Cursor, table: str, columns: Sequence[str], rows: Sequence[Params]
    ) -> None:
        """Bulk-insert ``rows`` into ``table`` within the transaction of ``cur``.

        The fastest load each backend has: COPY on PostgreSQL, one prepared INSERT run over
        all rows on SQLite. All or none of the rows: if one collides with a unique key,
        nothing of this call is inserted, the transaction stays usable, and
        :class:`DuplicateKey` is raised (the caller finds the culprit with a query).
        """
        check_identifiers(table, columns)
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        cur.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            cur.executemany(sql, rows)
        except Exception as exc:
            cur.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            if self.is_unique_violation(exc):
                raise DuplicateKey(f"a row's unique key is already taken in {table}") from None
            raise
        cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")

    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether a driver error means a UNIQUE or PRIMARY KEY constraint refused a row."""
        return False

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self.transaction() as cur:
            return cur.execute(sql, params).fetchall()

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the data lives, without credentials."""
