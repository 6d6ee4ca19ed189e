"""One row's value cannot make a clean-room query fail: a query that fails on D and succeeds
on D minus one user is not ε-DP for any ε, and the failure went to the public log.

Before, the bounding SQL converted a measure to integer units *before* clamping it, so a watch
time of ``inf`` or about 9e17 raised DuckDB's ConversionException (Spark's overflow in ANSI
mode). Now non-finite values are dropped and every value is clamped before the conversion, in
every engine; and ``open_engine`` refuses a data file holding a non-finite measure, naming file,
row and field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_cleanroom_engines import SALT, reference

from bastion.catalog import default_catalog
from bastion.cleanroom import (
    CleanRoom,
    CleanRoomConfig,
    DuckDBEngine,
    SparkEngine,
    compile_plan,
    open_engine,
)
from bastion.cleanroom.engines import BoundedAggregate, check_measures
from bastion.cleanroom.templates import parse_request
from bastion.clock import FixedClock
from bastion.errors import InputError
from bastion.events import Actor, AnalyticsQuery, decode_event
from bastion.ledger.log import Log
from bastion.store import Database

CAT = default_catalog()
CFG = CleanRoomConfig()
BAD = {"inf": math.inf, "-inf": -math.inf, "9e17": 9e17, "1e300": 1e300, "nan": math.nan}
QUERIES: list[dict[str, Any]] = [
    {"template": "sum", "epsilon": 1, "measure": "watch_time_s", "group_by": ["event_type"]},
    {"template": "mean", "epsilon": 1, "measure": "watch_time_s", "group_by": ["age_band"]},
    {
        "template": "quantiles",
        "epsilon": 1,
        "measure": "watch_time_s",
        "group_by": ["region"],
        "bins": 20,
    },
    {"template": "sum", "epsilon": 1, "measure": "revenue_usd", "group_by": ["campaign_id"]},
]


def _plan(req: dict[str, Any]) -> Any:
    return compile_plan(parse_request(req), CAT, CFG)


@pytest.fixture(scope="module")
def neighbours(platform_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """For each bad value: D (one view and one ad event of one user carry it) and D minus
    that user, each in its own data directory."""
    table = pq.read_table(platform_dir / "events.parquet")
    views = pc.fill_null(pc.is_valid(table["watch_time_s"]), False)
    ads = pc.fill_null(pc.is_valid(table["revenue_usd"]), False)
    users_with_views = set(pc.filter(table["user_id"], views).to_pylist())
    users_with_ads = set(pc.filter(table["user_id"], ads).to_pylist())
    user = sorted(users_with_views & users_with_ads)[0]
    ids = table["user_id"].to_pylist()
    first_view = next(i for i, u in enumerate(ids) if u == user and views[i].as_py())
    first_ad = next(i for i, u in enumerate(ids) if u == user and ads[i].as_py())
    out: dict[str, Any] = {"user": user}
    for name, value in BAD.items():
        watch = table["watch_time_s"].to_pylist()
        revenue = table["revenue_usd"].to_pylist()
        watch[first_view], revenue[first_ad] = value, value
        d = table.set_column(
            table.schema.get_field_index("watch_time_s"),
            "watch_time_s",
            pa.array(watch, pa.float64()),
        )
        d = d.set_column(
            d.schema.get_field_index("revenue_usd"), "revenue_usd", pa.array(revenue, pa.float64())
        )
        minus = d.filter(pc.not_equal(d["user_id"], user))
        dirs = {}
        for label, data in (("D", d), ("D-minus-user", minus)):
            where = tmp_path_factory.mktemp(f"nonfinite-{name}-{label}")
            pq.write_table(data, where / "events.parquet")
            dirs[label] = where
        out[name] = dirs | {"row": first_view + 1, "events": d.to_pylist()}
    return out


@pytest.mark.parametrize("bad", list(BAD))
def test_duckdb_answers_on_d_and_on_d_minus_the_user(neighbours: dict[str, Any], bad: str) -> None:
    finite = bad in ("9e17", "1e300")
    for label in ("D", "D-minus-user"):
        engine = DuckDBEngine(neighbours[bad][label], threads=2)
        try:
            for req in QUERIES:
                plan = _plan(req)
                got = engine.aggregate(plan, SALT)
                assert isinstance(got, BoundedAggregate), (label, req)
                if label == "D":
                    # Exactly the bounding rules: a huge value is clamped, a non-finite one
                    # dropped (the reference implementation, written without SQL).
                    assert got == reference(plan, neighbours[bad]["events"], SALT), req
                    if finite and req["template"] == "sum":
                        assert got.groups, req
        finally:
            engine.close()


def test_spark_answers_on_d_and_on_d_minus_the_user(neighbours: dict[str, Any]) -> None:
    pytest.importorskip("pyspark")
    for bad in BAD:
        for label in ("D", "D-minus-user"):
            spark = SparkEngine(neighbours[bad][label], master="local[2]")
            duck = DuckDBEngine(neighbours[bad][label], threads=2)
            try:
                for req in QUERIES:
                    plan = _plan(req)
                    assert spark.aggregate(plan, SALT) == duck.aggregate(plan, SALT), (bad, req)
            finally:
                duck.close()
                spark.close()


@pytest.fixture
def room_on(db: Database, ledger: Log, clock: FixedClock) -> Iterator[Any]:
    engines: list[DuckDBEngine] = []

    def make(data_dir: Path) -> CleanRoom:
        engine = DuckDBEngine(data_dir, threads=2)
        engines.append(engine)
        room = CleanRoom(db, ledger, clock, engine)
        admin = Actor(id="dpo", kind="operator")
        for scope, who in (("analyst", "a@p"), ("organization", "p")):
            room.set_budget(scope, who, epsilon=50.0, delta=1e-5, admin=admin, reason="test")
        return room

    yield make
    for engine in engines:
        engine.close()


@pytest.mark.parametrize("bad", ["inf", "9e17", "nan"])
def test_the_query_is_released_on_both_neighbours(
    room_on: Any, ledger: Log, neighbours: dict[str, Any], bad: str
) -> None:
    for label in ("D", "D-minus-user"):
        room = room_on(neighbours[bad][label])
        for req in QUERIES:
            result = room.run_query(req, analyst="a@p", organization="p")
            event = decode_event(ledger.entry(result.receipt.index))
            assert isinstance(event, AnalyticsQuery) and event.outcome == "released", (label, req)


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_a_non_finite_measure_is_refused_on_the_way_in(
    neighbours: dict[str, Any], bad: str
) -> None:
    data_dir = neighbours[bad]["D"]
    with pytest.raises(InputError) as err:
        check_measures(data_dir / "events.parquet")
    assert err.value.file == str(data_dir / "events.parquet")
    assert err.value.row == neighbours[bad]["row"]
    assert err.value.field == "watch_time_s"
    with pytest.raises(InputError, match="finite"):
        open_engine("duckdb", data_dir)
    # Its neighbour without that user, and any file of finite values, however large, opens.
    check_measures(neighbours[bad]["D-minus-user"] / "events.parquet")
    check_measures(neighbours["9e17"]["D"] / "events.parquet")
    open_engine("duckdb", neighbours["9e17"]["D"]).close()
