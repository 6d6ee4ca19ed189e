"""The storage interface: transactions, one named lock for single-writer sections, migrations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from bastion.errors import ConfigError

Params = Sequence[Any]


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

    @abstractmethod
    def transaction(self, lock: str | None = None) -> AbstractContextManager[Cursor]:
        """Open a transaction; commit on success, roll back on any exception.

        ``lock`` names a critical section (e.g. the log's sequencer). Holders of the same
        name are serialized across processes until the transaction ends.
        """

    def migrate(self, component: str, statements: Sequence[str]) -> None:
        """Run a component's idempotent DDL (``CREATE ... IF NOT EXISTS``)."""
        with self.transaction(lock=f"migrate:{component}") as cur:
            for stmt in statements:
                cur.execute(self.render_ddl(stmt))

    def render_ddl(self, stmt: str) -> str:
        blob, integer = ("BLOB", "INTEGER") if self.dialect == "sqlite" else ("BYTEA", "BIGINT")
        return stmt.replace("{blob}", blob).replace("{int}", integer)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self.transaction() as cur:
            return cur.execute(sql, params).fetchall()

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the data lives, without credentials."""


def open_database(url: str, *, schema: str | None = None) -> Database:
    """Open ``sqlite:///path`` or ``postgresql://...``. ``schema`` isolates PostgreSQL tests."""
    if url.startswith("sqlite:///"):
        from bastion.store.sqlite import SqliteDatabase

        return SqliteDatabase(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from bastion.store.postgres import PostgresDatabase

        return PostgresDatabase(url, schema=schema)
    raise ConfigError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")
