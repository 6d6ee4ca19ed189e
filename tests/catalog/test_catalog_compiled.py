"""The compiled validator agrees with the per-value rules, row by row and column by column."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.catalog import (
    Classification,
    DatasetSpec,
    Domain,
    FieldSpec,
    FieldType,
    coerce_value,
    default_catalog,
    validate_row,
)
from bastion.catalog.compiled import ValidBatch, compile_field, row_validator
from bastion.errors import InputError
from bastion.synth import Platform, SynthSpec

EVENTS = default_catalog().dataset("events")
USERS = default_catalog().dataset("users")


def _outcome(fn: Any, raw: object) -> tuple[str, object]:
    try:
        value = fn(raw)
    except ValueError as exc:  # _Bad is a ValueError
        return ("error", str(exc))
    return ("value", (type(value), value))


def _same(spec: FieldSpec, raw: object) -> None:
    want = _outcome(lambda r: coerce_value(spec, r), raw)
    have = _outcome(compile_field(spec), raw)
    if want[0] == "value" and have[0] == "value":
        (want_type, want_value), (have_type, have_value) = want[1], have[1]  # type: ignore[misc]
        assert have_type is want_type
        if isinstance(want_value, float) and math.isnan(want_value):
            assert math.isnan(have_value)
            return
        assert have_value == want_value
        if isinstance(want_value, datetime):
            assert have_value.tzinfo is want_value.tzinfo is UTC
        return
    assert have == want


RAW = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.text(alphabet='ab\u00e9\u65e5"\\\n', max_size=300),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=5))])),
    st.lists(st.text(max_size=20), max_size=5),
    st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.tuples(st.floats(), st.floats()),
    st.fixed_dictionaries({"lat": st.floats(), "lon": st.floats()}),
)

SPECS = [
    FieldSpec("s", t, Classification.PROTECTED, max_bytes=limit, domain=domain)
    for t in FieldType
    for limit in (4, 20, 256)
    for domain in (None,)
] + [
    FieldSpec("d", FieldType.STRING, Classification.PUBLIC, domain=Domain(values=("a", "bb"))),
    FieldSpec("n", FieldType.INT, Classification.PUBLIC, domain=Domain(low=0, high=10)),
    FieldSpec("n", FieldType.INT, Classification.PUBLIC, domain=Domain(values=(1, 5))),
    FieldSpec(
        "day",
        FieldType.DATE,
        Classification.PUBLIC,
        domain=Domain(low=date(2026, 1, 1), high=date(2026, 1, 28)),
    ),
]


@settings(max_examples=400, deadline=None)
@given(raw=RAW, index=st.integers(min_value=0, max_value=len(SPECS) - 1))
def test_compiled_field_agrees_with_coerce_value(raw: object, index: int) -> None:
    _same(SPECS[index], raw)


@pytest.mark.parametrize(
    "raw",
    [
        "x" * 300,
        "\u00e9" * 100,
        "\ud800",
        10**19,
        -(10**19) + 1,
        1e308,
        -0.0,
        datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3))),
        datetime(2026, 1, 1, 12),
        {"lat": 91.0, "lon": 0.0},
        {"lat": 1.0, "lon": 2.0, "alt": 3.0},
        [1.0, 2.0],
        ["a", "b"],
        [],
    ],
)
def test_compiled_field_edge_cases(raw: object) -> None:
    for spec in SPECS:
        try:
            want = coerce_value(spec, raw)
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                compile_field(spec)(raw)
            continue
        except ValueError:
            with pytest.raises(ValueError):
                compile_field(spec)(raw)
            continue
        assert compile_field(spec)(raw) == want


def test_first_problem_in_field_order_is_reported() -> None:
    row = {"event_id": "e1", "user_id": "u1", "video_id": "v1", "event_type": "nope", "ts": "x"}
    with pytest.raises(InputError) as exc:
        validate_row(EVENTS, row, file="f", row_number=9)
    # event_type comes before ts in the catalog, so its error wins.
    assert exc.value.field == "event_type" and exc.value.row == 9


def test_missing_required_field_before_a_bad_later_one() -> None:
    row = {"event_id": "e1", "video_id": "v1", "event_type": "view", "ts": "not a time"}
    with pytest.raises(InputError) as exc:
        validate_row(EVENTS, row, file="f", row_number=2)
    assert exc.value.field == "user_id" and "missing subject id" in str(exc.value)


def _synth_batches(dataset: str) -> list[pa.RecordBatch]:
    spec = SynthSpec(seed=3, users=60, videos=12, events=700)
    return [b for table in Platform(spec).chunks(dataset) for b in table.to_batches()]


@pytest.mark.parametrize("dataset", ["users", "events"])
def test_arrow_columns_equal_row_by_row_values(dataset: str) -> None:
    spec = default_catalog().dataset(dataset)
    validator = row_validator(spec)
    number = 1
    for batch in _synth_batches(dataset):
        got = validator.arrow(batch, file="p", first_row=number)
        rows = [
            validate_row(spec, raw, file="p", row_number=number + i)
            for i, raw in enumerate(batch.to_pylist())
        ]
        assert list(got.numbers) == list(range(number, number + batch.num_rows))
        assert got.rows() == rows
        for have, want in zip(got.rows(), rows, strict=True):
            for name, value in want.items():
                assert type(have[name]) is type(value)
                if isinstance(value, datetime):
                    assert have[name].tzinfo is UTC  # type: ignore[union-attr]
        number += batch.num_rows


def _events_batch(**columns: Any) -> pa.RecordBatch:
    base: dict[str, Any] = {
        "event_id": [f"e{i}" for i in range(6)],
        "user_id": ["u1"] * 6,
        "video_id": ["v1"] * 6,
        "event_type": ["view"] * 6,
        "ts": pa.array([datetime(2026, 1, 3, 10, i, tzinfo=UTC) for i in range(6)]),
        "day": pa.array([date(2026, 1, 3)] * 6),
        "watch_time_s": [1.5] * 6,
        "age_band": ["18-24"] * 6,
        "region": ["uk"] * 6,
    }
    base.update(columns)
    return pa.RecordBatch.from_pydict(base)


def _arrow_error(batch: pa.RecordBatch) -> InputError:
    with pytest.raises(InputError) as exc:
        row_validator(EVENTS).arrow(batch, file="x.parquet", first_row=101)
    assert exc.value.file == "x.parquet" and exc.value.dataset == "events"
    return exc.value


def test_arrow_reports_the_first_bad_row_across_columns() -> None:
    # Row 4 (index 3) has a bad day; row 3 (index 2) has a region outside the domain.
    days = [date(2026, 1, 3)] * 6
    days[3] = date(2025, 1, 1)
    regions = ["uk"] * 6
    regions[2] = "mars"
    err = _arrow_error(_events_batch(day=pa.array(days), region=regions))
    assert (err.row, err.field) == (103, "region")


@pytest.mark.parametrize(
    ("change", "row", "field", "reason"),
    [
        ({"event_id": ["e0", "e1", "", "e3", "e4", "e5"]}, 103, "event_id", "missing record id"),
        ({"user_id": ["u1"] * 5 + [None]}, 106, "user_id", "missing subject id"),
        ({"video_id": ["v" * 40] + ["v1"] * 5}, 101, "video_id", "limit is 32"),
        ({"watch_time_s": [1.0, math.inf, 1, 1, 1, 1]}, 102, "watch_time_s", "finite"),
        ({"watch_time_s": ["1", "1s"] * 3}, 102, "watch_time_s", "expected a number"),
        ({"event_type": ["view"] * 4 + ["watch", "view"]}, 105, "event_type", "domain"),
        ({"ssn": ["1"] * 6}, 101, "ssn", "unknown column"),
    ],
)
def test_arrow_errors_name_row_and_field(
    change: dict[str, Any], row: int, field: str, reason: str
) -> None:
    err = _arrow_error(_events_batch(**change))
    assert (err.row, err.field) == (row, field)
    assert reason in str(err)


def test_arrow_missing_required_column() -> None:
    batch = _events_batch().drop_columns(["video_id"])
    err = _arrow_error(batch)
    assert (err.row, err.field) == (101, "video_id")


def test_arrow_empty_strings_and_absent_optional_columns_are_missing_values() -> None:
    batch = _events_batch(campaign_id=["", "c1", None, "", "c2", ""])
    got = row_validator(EVENTS).arrow(batch, file="p", first_row=1)
    assert list(got.columns["campaign_id"]) == [None, "c1", None, None, "c2", None]
    assert list(got.columns["device_id"]) == [None] * 6  # not in the file at all


@pytest.mark.parametrize(
    "column",
    [
        pa.array([datetime(2026, 1, 3, 10, 0, 0, 123456)] * 6, pa.timestamp("us")),
        pa.array([datetime(2026, 1, 3, 10, 0, 0, 123000)] * 6, pa.timestamp("ms", tz="UTC")),
        pa.array(
            [datetime(2026, 1, 3, 15, 0, tzinfo=UTC)] * 6, pa.timestamp("s", tz="Asia/Kolkata")
        ),
        pa.array([datetime(2026, 1, 3, 10, 0, 0, 1)] * 6, pa.timestamp("ns")),
        pa.array(["2026-01-03T10:00:00+02:00"] * 6),
    ],
)
def test_arrow_timestamps_agree_with_rows(column: pa.Array) -> None:
    batch = _events_batch(ts=column)
    got = row_validator(EVENTS).arrow(batch, file="p", first_row=1)
    rows = [
        validate_row(EVENTS, raw, file="p", row_number=i)
        for i, raw in enumerate(batch.to_pylist(), 1)
    ]
    assert [r["ts"] for r in rows] == list(got.columns["ts"])
    assert all(t.tzinfo is UTC for t in got.columns["ts"])  # type: ignore[union-attr]


def test_valid_batch_from_rows_keeps_catalog_order() -> None:
    rows = [
        (7, validate_row(EVENTS, _events_batch().to_pylist()[0], file="p", row_number=7)),
    ]
    batch = ValidBatch.from_rows(rows, EVENTS.field_names)
    assert list(batch.columns) == EVENTS.field_names and list(batch.numbers) == [7]
    assert batch.rows() == [rows[0][1]]


def test_validator_is_built_once_per_dataset() -> None:
    assert row_validator(EVENTS) is row_validator(EVENTS)
    copy = DatasetSpec(EVENTS.name, EVENTS.record_id, EVENTS.subject_key, EVENTS.fields)
    assert row_validator(copy) is not row_validator(EVENTS)


def test_parquet_file_and_row_paths_agree(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.Table.from_batches(_synth_batches("users"))
    path = tmp_path / "users.parquet"
    pq.write_table(table, path)
    validator = row_validator(USERS)
    arrow_rows: list[dict[str, Any]] = []
    number = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=17):
        arrow_rows += validator.arrow(batch, file="p", first_row=number).rows()
        number += batch.num_rows
    assert arrow_rows == [
        validate_row(USERS, raw, file="p", row_number=i)
        for i, raw in enumerate(table.to_pylist(), 1)
    ]
