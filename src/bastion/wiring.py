"""Wires a Home into live components: database, key provider, vault, ledger.

This is the composition root: only the CLI and the gateway import it.
"""

from __future__ import annotations

from typing import Any

from bastion.home import Home
from bastion.store import Database, open_database


def open_store(home: Home) -> Database:
    return open_database(home.database_url)


def initialize(home: Home) -> dict[str, Any]:
    """Create the database tables, the keys and the log's signing key for a new home."""
    db = open_store(home)
    try:
        from bastion.ledger.log import initialize_log
        from bastion.vault import initialize_vault

        summary: dict[str, Any] = {"database": db.description}
        summary.update(initialize_vault(home, db))
        summary.update(initialize_log(db, home.keyring_dir, home.settings.log_origin))
        return summary
    finally:
        db.close()
