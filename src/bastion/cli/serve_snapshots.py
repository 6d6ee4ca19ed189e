"""``bastion serve`` keeps the clean room's snapshot current: one refresher per server.

It runs in the serving process itself (beside uvicorn's workers when there are several), on
its own database connection and log writer, so ``--workers 8`` still has exactly one
refresher; ``bastion cleanroom snapshot`` from cron is the same build, and the two never run
at once (the builder's file lock). Off when the clean room is not installed or
``[cleanroom] snapshot_refresh_seconds = 0``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bastion.clock import Clock, SystemClock
from bastion.extras import MissingExtra, require
from bastion.home import Home

log = logging.getLogger(__name__)


@contextmanager
def running_refresher(home: Home, clock: Clock | None = None) -> Iterator[threading.Thread | None]:
    """Refresh the snapshot every ``snapshot_refresh_seconds`` while the block runs."""
    interval = home.settings.cleanroom.snapshot_refresh_seconds
    try:
        require("analytics", "the clean room's snapshot")
    except MissingExtra:
        interval = 0
    if interval <= 0:
        yield None
        return
    from bastion.cleanroom import CleanRoomConfig, default_data_dir
    from bastion.cleanroom.snapshot import SnapshotBuilder
    from bastion.cleanroom.snapshot_engine import SnapshotRefresher
    from bastion.ledger.log import open_log
    from bastion.store import open_database
    from bastion.vault import open_vault

    clock = clock or SystemClock()
    db = open_database(home.database_url, bounds=home.settings.bounds)
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        ledger = open_log(home, db, clock, background=False)
        try:
            vault = open_vault(home, db, clock)
            builder = SnapshotBuilder(
                vault,
                ledger,
                clock,
                default_data_dir(home.path, home.settings),
                config=CleanRoomConfig.from_settings(home.settings),
            )
            refresher = SnapshotRefresher(builder, clock, interval)
            thread = threading.Thread(
                target=refresher.run, args=(stop,), daemon=True, name="cleanroom-snapshot"
            )
            thread.start()
            yield thread
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)
            ledger.close()
    finally:
        db.close()
