"""Create and open the vault of a home: the composition root calls only these two functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.catalog import Catalog, default_catalog, load_catalog
from bastion.clock import Clock, SystemClock
from bastion.errors import NotInitialized, StoreUnavailable
from bastion.home import Home
from bastion.keys.factory import create_key_provider, open_key_provider
from bastion.store import Database
from bastion.vault.files import count_rows, file_format, read_arrow, read_rows
from bastion.vault.identity import IDENTITY_SECRET
from bastion.vault.vault import IngestResult, Vault

CATALOG_FILE = "catalog.yaml"


def home_catalog(home: Home) -> Catalog:
    """The home's own catalog.yaml if it has one, else the shipped synthetic-platform catalog."""
    path = home.path / CATALOG_FILE
    return load_catalog(path) if path.is_file() else default_catalog()


def initialize_vault(home: Home, db: Database) -> dict[str, Any]:
    """Create the key provider's keys, the vault's tables and its identity secret (idempotent)."""
    provider = create_key_provider(home)
    try:
        Vault.create_schema(db)
        vault = Vault(db, provider, home_catalog(home), SystemClock())
        vault.ensure_identity()
        return {"key_provider": provider.name, "kek_version": provider.current_version}
    finally:
        provider.close()


# Whether the vault's table exists, asked of the catalog so that a missing table is an answer
# (0) rather than an error: any error then means the database itself could not be read.
_TABLE_EXISTS = {
    "sqlite": "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'vault_secrets'",
    "postgresql": "SELECT COUNT(*) FROM (SELECT to_regclass('vault_secrets') AS t) s "
    "WHERE t IS NOT NULL",
}


def _unreachable(db: Database, exc: Exception) -> StoreUnavailable:
    # A StoreUnavailable already says what failed (and holds no credentials); a driver error
    # is named by its type only, since its text may quote the statement.
    cause = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
    return StoreUnavailable(
        f"the database is unreachable ({db.description}): {cause}; the vault cannot be opened"
    )


def _query(db: Database, sql: str, params: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    try:
        return db.query(sql, params)
    except Exception as exc:
        raise _unreachable(db, exc) from None


def open_vault(home: Home, db: Database, clock: Clock, *, catalog: Catalog | None = None) -> Vault:
    """Open the vault. A database that was never initialized says so (NotInitialized); one that
    cannot be reached or read says that (StoreUnavailable), never "not initialized"."""
    exists = _TABLE_EXISTS.get(db.dialect)
    if exists is not None and int(_query(db, exists)[0][0]) == 0:
        raise NotInitialized(
            f"the vault is not initialized in {db.description}; run `bastion init`"
        )
    rows = _query(db, "SELECT COUNT(*) FROM vault_secrets WHERE name = ?", (IDENTITY_SECRET,))
    if not rows or int(rows[0][0]) == 0:
        raise NotInitialized(
            f"the vault is not initialized in {db.description}; run `bastion init`"
        )
    provider = open_key_provider(home, clock=clock)  # re-validates its keys by this clock
    return Vault(db, provider, catalog or home_catalog(home), clock)


def ingest_file(
    vault: Vault,
    dataset: str,
    path: Path,
    *,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest one CSV, JSONL or Parquet file, all or nothing.

    Parquet goes in as Arrow batches, checked column by column; CSV and JSONL row by row.
    Both give the same errors for the same bad row.
    """
    vault.catalog.dataset(dataset)  # an unknown dataset fails before the file is read
    if file_format(path) == "parquet":
        return vault.ingest_arrow(
            dataset,
            read_arrow(path, batch_size),
            source=str(path),
            batch_size=batch_size,
            progress=progress,
        )
    return vault.ingest_rows(
        dataset, read_rows(path), source=str(path), batch_size=batch_size, progress=progress
    )


__all__ = ["count_rows", "home_catalog", "ingest_file", "initialize_vault", "open_vault"]
