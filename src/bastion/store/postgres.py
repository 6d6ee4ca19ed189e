"""PostgreSQL via psycopg 3: the production backend that several gateway processes share."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from bastion.errors import StoreUnavailable
from bastion.home import Bounds
from bastion.store.base import Cursor, Database, DuplicateKey, Params, check_identifiers

_PLACEHOLDER = re.compile(r"\?")
RV = TypeVar("RV")


def _to_pg(sql: str) -> str:
    # Bastion's SQL never contains a literal '?', so a plain swap is exact.
    return _PLACEHOLDER.sub("%s", sql)


def _lock_key(name: str) -> int:
    """The advisory lock a named lock is: 64 bits of the name's SHA-256."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


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


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def bounded_conninfo(dsn: str, bounds: Bounds, schema: str | None = None) -> str:
    """``dsn`` with every wait bounded (see ``home.Bounds``), and ``schema`` first on the path.

    Server side, per session: ``statement_timeout``, ``lock_timeout`` (advisory locks too: the
    ledger's sequencer, the bulk counters) and ``idle_in_transaction_session_timeout``, so a
    session whose client went silent in mid-transaction is ended and its locks released.
    Client side: libpq's ``connect_timeout``, TCP keepalives and ``tcp_user_timeout``, so a
    dead link is noticed by the kernel. Options already in ``dsn`` are kept, these added.
    """
    settings = [
        f"-c statement_timeout={_ms(bounds.statement_timeout_s)}",
        f"-c lock_timeout={_ms(bounds.lock_timeout_s)}",
        f"-c idle_in_transaction_session_timeout={_ms(bounds.idle_in_transaction_s)}",
    ]
    if schema:
        settings.append(f"-c search_path={schema}")
    given = str(conninfo_to_dict(dsn).get("options") or "")
    return make_conninfo(
        dsn,
        options=" ".join([given, *settings]).strip(),
        # libpq counts whole seconds and treats anything under 2 as 2.
        connect_timeout=max(2, math.ceil(bounds.connect_timeout_s)),
        keepalives=1,
        keepalives_idle=bounds.keepalives_idle_s,
        keepalives_interval=bounds.keepalives_interval_s,
        keepalives_count=bounds.keepalives_count,
        tcp_user_timeout=_ms(bounds.tcp_user_timeout_s),
    )


class BoundedConnection(psycopg.Connection[TupleRow]):
    """A connection that stops waiting for the server after ``round_trip_s``.

    psycopg waits for an answer for as long as the socket stays open; a network path that
    stops forwarding but keeps the connection open (a stalled proxy or NAT, a frozen peer)
    would hang the caller for good, and neither TCP keepalives nor ``tcp_user_timeout`` see
    it (the middlebox acknowledges everything). Every wait here has a deadline instead
    (:class:`_Watchdog`): past it the connection is shut down (its state is unknown) and the
    wait raises ``OperationalError``. The server's ``statement_timeout`` is shorter, so a
    live server always answers first.
    """

    round_trip_s: float = Bounds().round_trip_s
    _expired: bool = False

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        _WATCHDOG.arm(self, time.monotonic() + self.round_trip_s)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.Error:
            if not self._expired:
                raise
            self.close()
            raise psycopg.OperationalError(
                f"PostgreSQL did not answer within {self.round_trip_s:g}s; connection dropped"
            ) from None
        finally:
            _WATCHDOG.disarm(self)

    def _expire(self) -> None:
        """Called by the watchdog: wake the waiting thread by shutting the socket down."""
        self._expired = True
        with contextlib.suppress(OSError, psycopg.Error):
            sock = socket.socket(fileno=os.dup(self.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()


class _Watchdog:
    """One thread for the process that ends waits past their deadline (checked every tick).

    ``arm`` and ``disarm`` are a dictionary store under a lock, so the cost per round trip
    is a microsecond; a connection is expired only while armed, under the same lock, so a
    wait that returned in time is never cut short afterwards. The thread exits when nothing
    has been armed for a while and starts again on the next ``arm``.
    """

    TICK = 0.1
    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, BoundedConnection]] = {}
        self._running = False

    def arm(self, conn: BoundedConnection, deadline: float) -> None:
        with self._lock:
            self._armed[id(conn)] = (deadline, conn)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="pg-watchdog", daemon=True).start()

    def disarm(self, conn: BoundedConnection) -> None:
        with self._lock:
            self._armed.pop(id(conn), None)

    def _run(self) -> None:
        idle = 0.0
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                if not self._armed:
                    idle += self.TICK
                    if idle >= self.IDLE_EXIT:
                        self._running = False
                        return
                    continue
                idle = 0.0
                late = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
                for key in late:
                    _, conn = self._armed.pop(key)
                    conn._expire()


_WATCHDOG = _Watchdog()


def connect_bounded(
    dsn: str, bounds: Bounds, *, schema: str | None = None, autocommit: bool = False
) -> BoundedConnection:
    """A new connection whose every wait is bounded; StoreUnavailable if it cannot be made."""
    try:
        conn = BoundedConnection.connect(
            bounded_conninfo(dsn, bounds, schema), autocommit=autocommit
        )
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {_redact(dsn)}: {type(exc).__name__}"
        ) from None
    conn.round_trip_s = bounds.round_trip_s
    return conn


class PostgresDatabase(Database):
    dialect = "postgresql"
    bulk_load_in_background = True

    def __init__(
        self, dsn: str, *, schema: str | None = None, bounds: Bounds | None = None
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.bounds = bounds or Bounds()
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
            conn = self.connect()
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def connect(self, *, autocommit: bool = False) -> BoundedConnection:
        """A new connection of this database's own (bounded, on its schema), for a caller
        that keeps one apart, such as the ledger's sequencer."""
        return connect_bounded(self.dsn, self.bounds, schema=self.schema, autocommit=autocommit)

    def lock_in(self, cur: Cursor, name: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(name),))

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Cursor]:
        conn = self._conn()
        try:
            with conn.cursor() as raw:
                if lock:
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(lock),))
                yield _PgCursor(raw)
        except BaseException as exc:
            # Lost: the server is unreachable or silent (this client's deadline), ended the
            # session (idle_in_transaction_session_timeout) or gave up on a statement or a
            # lock (statement_timeout, lock_timeout). Nothing of the transaction is kept, and
            # the caller gets StoreUnavailable (a 503), named by the driver error's type only:
            # its text may quote the statement.
            lost = isinstance(exc, psycopg.OperationalError) or (
                isinstance(exc, psycopg.Error) and conn.closed
            )
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()  # a fresh connection next time
                    lost = True
            if lost:
                raise StoreUnavailable(
                    f"PostgreSQL did not complete the transaction ({type(exc).__name__}); "
                    "nothing of it was kept"
                ) from None
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
