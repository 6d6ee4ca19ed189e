"""Which backend a database URL names. A module of its own so the backends can import the
interface (``base``) at module level and the interface never imports them."""

from __future__ import annotations

from bastion.errors import ConfigError
from bastion.home import Bounds
from bastion.store.base import Database
from bastion.store.postgres import PostgresDatabase
from bastion.store.sqlite import SqliteDatabase


def open_database(url: str, *, schema: str | None = None, bounds: Bounds | None = None) -> Database:
    """Open ``sqlite:///path`` or ``postgresql://...``. ``schema`` isolates PostgreSQL tests;
    ``bounds`` (default: ``Bounds()``) limits every wait on the database."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(url.removeprefix("sqlite:///"), bounds=bounds)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, schema=schema, bounds=bounds)
    raise ConfigError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")
