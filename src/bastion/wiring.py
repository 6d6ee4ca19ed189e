"""Wires a Home into live components: database, key provider, vault, ledger.

This is the composition root: only the CLI and the gateway import it.
"""

from __future__ import annotations

from typing import Any

from bastion.home import Home
from bastion.store import Database, open_database


def open_store(home: Home) -> Database:
    return open_database(home.database_url, bounds=home.settings.bounds)


def initialize(home: Home, *, policy_pack: bool = True) -> dict[str, Any]:
    """Create the database tables, the keys and the log's signing key for a new home."""
    db = open_store(home)
    try:
        from bastion.ledger.log import initialize_log, storage_for
        from bastion.vault import initialize_vault

        summary: dict[str, Any] = {"database": db.description}
        summary.update(initialize_vault(home, db))
        storage = storage_for(home, db)
        summary.update(
            initialize_log(db, home.keyring_dir, home.settings.log_origin, storage=storage)
        )
        if policy_pack:
            summary.update(_initialize_policy(home, db))
        else:
            from bastion.policy import initialize_policy

            # Tables only: until a policy is loaded every request is denied (fail closed).
            initialize_policy(db)
            summary["policy"] = "none loaded: every request is denied until `bastion policy load`"
        return summary
    finally:
        db.close()


def _initialize_policy(home: Home, db: Database) -> dict[str, Any]:
    """Install the shipped policy pack; the change is itself a ledger event."""
    from bastion.clock import SystemClock
    from bastion.ledger.log import open_log
    from bastion.policy import initialize_policy

    clock = SystemClock()
    log = open_log(home, db, clock, background=False)
    try:
        summary = initialize_policy(db, log, clock=clock)
        log.publish()  # the policy change is in the first published checkpoint
        return summary
    finally:
        log.close()
