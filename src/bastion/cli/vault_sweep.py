"""``bastion vault sweep``: delete records past their dataset's retention period, recorded."""

from __future__ import annotations

from pathlib import Path

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    progress_bar,
    reported_errors,
)
from bastion.cli.groups import vault_app
from bastion.clock import SystemClock
from bastion.home import Home


@vault_app.command("sweep")
def sweep(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Delete expired records (catalog `retention_days`), each batch in the ledger."""
    with reported_errors(as_json):
        from bastion.ledger.log import open_log
        from bastion.vault import open_vault
        from bastion.vault.retention import RetentionSweeper
        from bastion.wiring import open_store

        h = Home.load(home)
        db = open_store(h)
        try:
            clock = SystemClock()
            vault = open_vault(h, db, clock)
            log = open_log(h, db, clock, background=False)
            try:
                sweeper = RetentionSweeper(vault, log, batch_size=h.settings.retention.batch_size)
                expired = sweeper.expired()
                bar = progress_bar("deleting expired records", disable=as_json, transient=True)
                with bar:
                    task = bar.add_task("sweep", total=sum(expired.values()))
                    result = sweeper.sweep(lambda _dataset, n: bar.advance(task, n))
                if result.receipts:
                    log.publish()
            finally:
                log.close()
                vault.close()
        finally:
            db.close()
        if as_json:
            emit_json({"ok": True, **result.to_json()})
            return
        for dataset, n in result.deleted.items():
            console.print(f"{dataset}: deleted {n:,} expired records", highlight=False)
        if not result.deleted:
            console.print("No dataset declares a retention period.", highlight=False)
