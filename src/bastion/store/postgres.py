"""PostgreSQL via psycopg 3: the production backend that several gateway processes share."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from bastion.errors import StoreUnavailable
from bastion.store.base import Cursor, Database, DuplicateKey, Params, check_identifiers

_PLACEHOLDER = re.compile(r"\?")


def _to_pg(sql: str) -> str:
    # Bastion's SQL never contains a literal '?', so a plain swap is exact.
    return _PLACEHOLDER.sub("%s", sql)


class _PgCursor:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Params = ()) -> _PgCursor:
        self._cur.execute(_to_pg(sql), tuple(params))
        return self

    def executemany(self, sql: str, seq: Sequence[Params]) -> None:
        self._cur.executemany(_to_pg(sql), [tuple(p) for p in seq])

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def _redact(dsn: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", dsn)


class PostgresDatabase(Database):
    dialect = "postgresql"
    bulk_load_in_background = True

    def __init__(self, dsn: str, *, schema: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._guard = threading.Lock()
        self._types: dict[str, dict[str, int]] = {}
        if schema is not None:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
                raise StoreUnavailable(f"invalid schema name {schema!r}")
            with self._conn() as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"cannot connect to PostgreSQL at {_redact(self.dsn)}: {type(exc).__name__}"
                ) from None
            if self.schema:
                conn.execute(f"SET search_path TO {self.schema}")
                conn.commit()
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Cursor]:
        conn = self._conn()
        try:
            with conn.cursor() as raw:
                if lock:
                    key = int.from_bytes(
                        hashlib.sha256(lock.encode()).digest()[:8], "big", signed=True
                    )
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                yield _PgCursor(raw)
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        else:
            try:
                conn.commit()
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"commit failed: {type(exc).__name__}") from None

    def copy_rows(
        self, cur: Cursor, table: str, columns: Sequence[str], rows: Sequence[Params]
    ) -> None:
        """COPY in binary format: one stream per call instead of a statement per row."""
        check_identifiers(table, columns)
        if not isinstance(cur, _PgCursor):
            raise TypeError("copy_rows needs a cursor from this database's transaction()")
        raw = cur._cur
        types = self._column_types(raw, table, columns)
        raw.execute("SAVEPOINT bastion_copy_rows")
        try:
            with raw.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(types)
                write = copy.write_row
                for row in rows:
                    write(row)
        except psycopg.errors.UniqueViolation:
            raw.execute("ROLLBACK TO SAVEPOINT bastion_copy_rows")
            raw.execute("RELEASE SAVEPOINT bastion_copy_rows")
            raise DuplicateKey(f"a row's unique key is already taken in {table}") from None
        raw.execute("RELEASE SAVEPOINT bastion_copy_rows")

    def _column_types(
        self, raw: psycopg.Cursor[Any], table: str, columns: Sequence[str]
    ) -> list[int]:
        # Binary COPY needs each column's exact type; read once per table (and schema).
        known: dict[str, dict[str, int]] = self._types
        found = known.get(table)
        if found is None or any(c not in found for c in columns):
            raw.execute(
                "SELECT attname, atttypid::int FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
            found = known[table] = {str(name): int(oid) for name, oid in raw.fetchall()}
            missing = [c for c in columns if c not in found]
            if missing:
                raise StoreUnavailable(f"table {table} has no column {missing[0]}")
        return [found[c] for c in columns]

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    @property
    def description(self) -> str:
        suffix = f" (schema {self.schema})" if self.schema else ""
        return f"PostgreSQL {_redact(self.dsn)}{suffix}"

    def drop_schema(self) -> None:
        """Tests only: remove the isolated schema."""
        if self.schema:
            conn = self._conn()
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            conn.commit()
