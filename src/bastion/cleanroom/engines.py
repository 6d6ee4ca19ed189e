"""Engines: run the bounding SQL and return small, bounded, integer aggregates.

DuckDB is the embedded default. Spark (local mode in tests, a cluster in production) runs the
same SQL text for data beyond one machine. Neither adds noise: that is the release layer's
job, shared by both, so an engine can never release anything by itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bastion.cleanroom.config import DEFAULT_MEASURES
from bastion.cleanroom.plan import QueryPlan
from bastion.cleanroom.sql import Dialect, build_sql
from bastion.errors import ConfigError, InputError

GroupKey = tuple[str, ...]


@dataclass(frozen=True)
class GroupAggregate:
    rows_w: int  # bounded row count, in units of 1/row_weight
    users: int  # distinct users contributing to the group (after bounding)
    total: int  # bounded sum of the measure, in the measure's units
    clicks_w: int  # bounded ad clicks (ctr template), in units of 1/row_weight


@dataclass(frozen=True)
class BoundedAggregate:
    """What an engine hands the release layer: per-group integers, nothing row-level."""

    groups: dict[GroupKey, GroupAggregate] = field(default_factory=dict)
    # Quantiles: per group, bounded weights of each of the plan's bins.
    histograms: dict[GroupKey, tuple[int, ...]] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate: ...

    def close(self) -> None: ...


def _collect(plan: QueryPlan, agg_rows: list[Any], hist_rows: list[Any]) -> BoundedAggregate:
    k = len(plan.group_by)
    groups: dict[GroupKey, GroupAggregate] = {}
    for row in agg_rows:
        key = tuple(str(v) for v in row[:k])
        rows_w, users, total, clicks = (int(v or 0) for v in row[k : k + 4])
        if users == 0:
            continue  # an empty grand total
        groups[key] = GroupAggregate(rows_w, users, total, clicks)
    histograms: dict[GroupKey, list[int]] = {}
    for row in hist_rows:
        key = tuple(str(v) for v in row[:k])
        hist = histograms.setdefault(key, [0] * plan.bins)
        hist[int(row[k])] = int(row[k + 1])
    return BoundedAggregate(groups, {key: tuple(h) for key, h in histograms.items()})


def events_path(data_dir: Path) -> Path:
    """The Parquet file an engine reads: ``data_dir`` itself if it is a file (a snapshot's,
    from ``snapshot_engine``), else its ``events.parquet`` (tests, benchmarks)."""
    if data_dir.is_file():
        return data_dir
    path = data_dir / "events.parquet"
    if not path.is_file():
        raise ConfigError(f"no events.parquet in the clean room's data directory {data_dir}")
    return path


# The numeric columns templates may aggregate (the declared measures of the events dataset).
MEASURE_COLUMNS: tuple[str, ...] = tuple(DEFAULT_MEASURES["events"])
_CHECK_BATCH = 1 << 16


def check_measures(path: Path, columns: Sequence[str] = MEASURE_COLUMNS) -> None:
    """Refuse a data file in which a measure is NaN or infinite, naming its file, row and field.

    The way in: ``open_engine`` runs this once, before the engine answers anything. A measure
    that is not a number is a broken export, not a value to release. (The bounding SQL still
    drops such rows and clamps every value before converting it, so a file replaced under a
    running engine cannot make a query fail either.) Finite values outside a measure's bounds
    are legitimate: queries clamp them.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]
        floats = [c for c in present if pa.types.is_floating(pf.schema_arrow.field(c).type)]
        if not floats:
            return
        row = 0
        for batch in pf.iter_batches(columns=floats, batch_size=_CHECK_BATCH):
            for col in floats:
                bad = pc.fill_null(pc.invert(pc.is_finite(batch.column(col))), False)
                first = pc.index(bad, True).as_py()
                if first >= 0:
                    raise InputError(
                        "a measure must be a finite number (NaN and infinities are refused)",
                        file=str(path),
                        row=row + first + 1,
                        field=col,
                    )
            row += batch.num_rows
    except (pa.ArrowException, OSError):
        raise InputError("not a readable Parquet file", file=str(path)) from None


class DuckDBEngine:
    """The embedded engine. One connection, a cursor per query (thread-safe)."""

    name = "duckdb"

    def __init__(self, data_dir: Path, *, threads: int | None = None) -> None:
        import duckdb

        self.path = events_path(data_dir)
        self._con = duckdb.connect(config={"threads": threads or os.cpu_count() or 1})
        self._lock = threading.Lock()
        self.repoint(self.path)

    def repoint(self, path: Path) -> None:
        """Read ``path`` from now on (a new snapshot). A query already running keeps the file
        it opened, which the snapshot builder keeps for one more refresh."""
        literal = str(path).replace("'", "''")
        with self._lock:
            self._con.execute(
                f"CREATE OR REPLACE VIEW events AS SELECT * FROM read_parquet('{literal}')"
            )
            self.path = path

    def _run(self, sql: str) -> list[Any]:
        with self._lock:
            cur = self._con.cursor()
        try:
            rows: list[Any] = cur.execute(sql).fetchall()
            return rows
        finally:
            cur.close()

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate:
        sql = build_sql(plan, "duckdb", salt)
        agg = self._run(sql.aggregates) if sql.aggregates else []
        hist = self._run(sql.histogram) if sql.histogram else []
        return _collect(plan, agg, hist)

    def close(self) -> None:
        self._con.close()


class SparkEngine:
    """The same SQL on Apache Spark. ``master`` defaults to local mode on this machine."""

    name = "spark"
    dialect: Dialect = "spark"

    def __init__(
        self, data_dir: Path, *, master: str = "local[2]", session: Any | None = None
    ) -> None:
        self.path = events_path(data_dir)
        if session is None:
            from pyspark.sql import SparkSession

            session = (
                SparkSession.builder.master(master)
                .appName("bastion-cleanroom")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.shuffle.partitions", "8")
                .config("spark.sql.session.timeZone", "UTC")
                .getOrCreate()
            )
            session.sparkContext.setLogLevel("ERROR")
        self.spark = session
        self.repoint(self.path)

    def repoint(self, path: Path) -> None:
        """Read ``path`` from now on (a new snapshot)."""
        self.spark.read.parquet(str(path)).createOrReplaceTempView("events")
        self.path = path

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate:
        sql = build_sql(plan, "spark", salt)
        agg = [tuple(r) for r in self.spark.sql(sql.aggregates).collect()] if sql.aggregates else []
        hist = [tuple(r) for r in self.spark.sql(sql.histogram).collect()] if sql.histogram else []
        return _collect(plan, agg, hist)

    def close(self) -> None:
        self.spark.catalog.dropTempView("events")


class LazyEngine:
    """Opens the named engine on first use, so a gateway can start before the data exists.

    ``CleanRoom`` calls ``open()`` before charging a budget: a missing data directory is then
    a configuration error, not a failed (and charged) query.
    """

    def __init__(self, name: str, data_dir: Path) -> None:
        if name not in ("duckdb", "spark"):
            raise ConfigError(f"unknown clean-room engine {name!r} (duckdb or spark)")
        self.name = name
        self.data_dir = data_dir
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def open(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = open_engine(self.name, self.data_dir)
            return self._engine

    def aggregate(self, plan: QueryPlan, salt: str) -> BoundedAggregate:
        return self.open().aggregate(plan, salt)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


def open_engine(name: str, data_dir: Path) -> Engine:
    """The named engine over ``data_dir``, once its measures pass ``check_measures``."""
    if name not in ("duckdb", "spark"):
        raise ConfigError(f"unknown clean-room engine {name!r} (duckdb or spark)")
    check_measures(events_path(data_dir))
    if name == "duckdb":
        return DuckDBEngine(data_dir)
    return SparkEngine(data_dir)


__all__ = [
    "BoundedAggregate",
    "DuckDBEngine",
    "Engine",
    "GroupAggregate",
    "LazyEngine",
    "SparkEngine",
    "check_measures",
    "open_engine",
]
