"""Serving the snapshot: an engine that answers only from a current, whole snapshot, and the
background refresher ``bastion serve`` runs.

``SnapshotEngine.open()`` is what ``CleanRoom.run_query`` calls before it charges a budget.
It reads the manifest every time and refuses (``SnapshotUnavailable``: 503 from the gateway,
exit code 10 from the CLI) when there is no snapshot, when its ``as_of`` is older than
``max_age_s`` by the injected clock, or when the file it names does not match its size and
SHA-256 (a torn or altered file is never served). A new snapshot is hashed once (and again
if its size or mtime changes), then the engine's view is pointed at it.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

from bastion.cleanroom.engines import BoundedAggregate, DuckDBEngine, SparkEngine
from bastion.cleanroom.plan import QueryPlan
from bastion.cleanroom.snapshot import (
    RefreshResult,
    SnapshotBuilder,
    SnapshotUnavailable,
    age_seconds,
    read_manifest,
    verify_file,
)
from bastion.clock import Clock
from bastion.errors import ConfigError

log = logging.getLogger(__name__)


class SnapshotEngine:
    """DuckDB (or Spark) over the clean room's current snapshot in ``data_dir``."""

    def __init__(self, name: str, data_dir: Path, clock: Clock, *, max_age_s: float) -> None:
        if name not in ("duckdb", "spark"):
            raise ConfigError(f"unknown clean-room engine {name!r} (duckdb or spark)")
        if max_age_s <= 0:
            raise ConfigError("the clean room's max snapshot age must be positive")
        self.name = name
        self.data_dir = data_dir
        self.clock = clock
        self.max_age_s = max_age_s
        self._engine: DuckDBEngine | SparkEngine | None = None
        self._file: tuple[str, str, int, int] | None = None
        self._lock = threading.Lock()

    def open(self) -> SnapshotEngine:
        """Check the snapshot is there, current and whole, and read it from now on."""
        manifest = read_manifest(self.data_dir)
        if manifest is None:
            raise SnapshotUnavailable(
                "the clean room has no snapshot yet: run `bastion cleanroom snapshot`, or "
                "`bastion serve`, which refreshes it"
            )
        age = age_seconds(manifest, self.clock.now())
        if age > self.max_age_s:
            raise SnapshotUnavailable(
                f"the clean-room snapshot is {age:.0f} s old, over the "
                f"{self.max_age_s:g} s limit ([cleanroom] max_snapshot_age_seconds): it may "
                "still count erased or deleted records, so nothing is answered from it"
            )
        try:
            st = (self.data_dir / manifest.file).stat()
        except OSError:
            raise SnapshotUnavailable("the clean-room snapshot file is missing") from None
        # Hashed again whenever the file, its size or its mtime is not the one last checked:
        # a file changed on disk after its check is not served either.
        seen = (manifest.file, manifest.sha256, st.st_size, st.st_mtime_ns)
        with self._lock:
            if seen != self._file:
                path = verify_file(self.data_dir, manifest)
                if self._engine is None:
                    self._engine = (
                        DuckDBEngine(path) if self.name == "duckdb" else SparkEngine(path)
                    )
                else:
                    self._engine.repoint(path)
                self._file = seen
        return self

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate:
        # The snapshot was checked by open(), which run_query calls before it charges; this
        # reads what that check let through.
        with self._lock:
            engine = self._engine
        if engine is None:
            self.open()
            return self.aggregate(plan, salt)
        return engine.aggregate(plan, salt)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
                self._file = None


class SnapshotRefresher:
    """Runs ``builder.refresh()`` every ``interval_s`` of the injected clock.

    ``tick()`` refreshes when one is due (tests call it with a ``FixedClock``);
    ``run(stop)`` is the background loop of ``bastion serve``, which wakes at least once a
    second to ask. A failed refresh is logged (its type only) and tried again next time;
    meanwhile the snapshot ages and, past its limit, the clean room stops answering.
    """

    def __init__(self, builder: SnapshotBuilder, clock: Clock, interval_s: float) -> None:
        if interval_s <= 0:
            raise ConfigError("the snapshot refresh interval must be positive")
        self.builder = builder
        self.clock = clock
        self.interval = timedelta(seconds=interval_s)
        self._next = clock.now()
        self.failures = 0

    def tick(self) -> RefreshResult | None:
        now = self.clock.now()
        if now < self._next:
            return None
        self._next = now + self.interval
        try:
            return self.builder.refresh()
        except Exception as exc:  # a store or file error too: the loop must keep running
            self.failures += 1
            log.warning("clean-room snapshot refresh failed: %s", type(exc).__name__)
            return None

    def run(self, stop: threading.Event) -> None:
        wait = min(1.0, self.interval.total_seconds())
        while True:
            self.tick()
            if stop.wait(wait):
                return
