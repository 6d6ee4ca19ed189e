"""A flow's row filter and field transforms, column by column (pyarrow), with no I/O.

Input: one page the vault opened for a run (record keys, and per field its values as the
vault gives them: sealed values typed, clear ones as their JSON holds them). Output: the
Arrow table a payload chunk is written from, with ``_row`` (the flow's token of the record),
``_op`` (``upsert``) and the delivered fields transformed. Working on columns keeps a run of
millions of rows within a small factor of a plain columnar copy (``bench/bench_egress.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bastion.catalog import DatasetSpec, FieldSpec, FieldType, Value
from bastion.egress.model import (
    Condition,
    FilterOp,
    Flow,
    Generalization,
    Generalize,
    Grid,
    Keep,
    Pseudonymize,
    Transform,
    Truncate,
)
from bastion.egress.tokens import FlowTokens

ROW = "_row"
OP = "_op"
UPSERT = "upsert"
DELETE = "delete"

_ARROW: Mapping[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.INT: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOL: pa.bool_(),
    FieldType.DATE: pa.date32(),
    FieldType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    FieldType.STRING_LIST: pa.list_(pa.string()),
}

# Coarse market regions as latitude/longitude boxes, checked in order (first match wins);
# a point in none of them is "other". Coarse on purpose: a region says a country or a US
# census region, never a town.
REGION_BOXES: tuple[tuple[str, float, float, float, float], ...] = (
    ("us-northeast", 38.8, 47.5, -80.6, -66.9),
    ("us-midwest", 36.0, 49.4, -104.1, -80.5),
    ("us-south", 24.4, 39.7, -106.7, -75.0),
    ("us-west", 31.3, 49.0, -124.8, -102.0),
    ("canada", 41.7, 83.1, -141.0, -52.6),
    ("mexico", 14.5, 32.7, -118.4, -86.7),
    ("uk", 49.9, 60.9, -8.7, 1.8),
    ("brazil", -33.8, 5.3, -73.99, -34.8),
)


def source_type(spec: FieldSpec) -> pa.DataType:
    """The Arrow type of a field as the vault holds it (a location is its text)."""
    return _ARROW.get(spec.type, pa.string())


def output_type(spec: FieldSpec, transform: Transform) -> pa.DataType:
    """The Arrow type a recipient receives for a delivered field."""
    if isinstance(transform, Pseudonymize):
        return pa.string()  # a list of identifiers: its tokens joined by ","
    if isinstance(transform, Generalize):
        g = transform.generalize
        if g is Generalization.DAY:
            return pa.date32()
        if g is Generalization.HOUR:
            return pa.timestamp("us", tz="UTC")
        return pa.string()
    if isinstance(transform, Grid):
        return pa.string()
    return source_type(spec)


def output_schema(flow: Flow, ds: DatasetSpec) -> pa.Schema:
    """Every chunk's schema: the row token, the operation, then the delivered fields."""
    columns = [pa.field(ROW, pa.string(), nullable=False), pa.field(OP, pa.string(), False)]
    for name in flow.delivered:
        columns.append(pa.field(name, output_type(ds.field(name), flow.fields[name])))
    return pa.schema(columns)


def schema_json(schema: pa.Schema) -> list[dict[str, str]]:
    """The schema as the manifest states it: each column's name and Arrow type."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def to_column(spec: FieldSpec, values: Sequence[Value | Any]) -> pa.Array:
    """One field's values as an Arrow array of its source type."""
    kind = source_type(spec)
    if spec.type is FieldType.GEO:
        return pa.array([None if v is None else _geo_text(v) for v in values], pa.string())
    # Clear dates and timestamps are ISO text in the vault's JSON, sealed ones typed.
    temporal = pa.types.is_date32(kind) or pa.types.is_timestamp(kind)
    if temporal and any(isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).cast(kind)
    return pa.array(values, kind)


def row_mask(conditions: Sequence[Condition], columns: Mapping[str, pa.Array]) -> pa.Array | None:
    """Which rows the filter keeps (None: no filter, all of them). A null never matches a
    comparison, so a row with a missing value is left out unless the filter asks for nulls."""
    mask: pa.Array | None = None
    for cond in conditions:
        col = columns[cond.field]
        this = _condition(cond, col)
        this = pc.fill_null(this, False)
        mask = this if mask is None else pc.and_(mask, this)
    return mask


def _condition(cond: Condition, col: pa.Array) -> pa.Array:
    op = cond.op
    if op is FilterOp.IS_NULL:
        return pc.is_null(col)
    if op is FilterOp.NOT_NULL:
        return pc.is_valid(col)
    if op in (FilterOp.IN, FilterOp.NOT_IN):
        assert isinstance(cond.value, list)
        found = pc.is_in(col, value_set=pa.array(cond.value).cast(col.type))
        return pc.invert(found) if op is FilterOp.NOT_IN else found
    value = pa.scalar(cond.value).cast(col.type)
    compare = {
        FilterOp.EQ: pc.equal,
        FilterOp.NE: pc.not_equal,
        FilterOp.GT: pc.greater,
        FilterOp.GTE: pc.greater_equal,
        FilterOp.LT: pc.less,
        FilterOp.LTE: pc.less_equal,
    }[op]
    return compare(col, value)


def transform_column(
    spec: FieldSpec, transform: Transform, col: pa.Array, tokens: FlowTokens
) -> pa.Array:
    """One delivered field, transformed as its flow declares."""
    if isinstance(transform, Keep):
        return col
    if isinstance(transform, Pseudonymize):
        return _pseudonymize(spec, col, tokens)
    if isinstance(transform, Truncate):
        return _truncate(col, transform.truncate)
    if isinstance(transform, Generalize):
        return _generalize(spec, col, transform.generalize)
    if isinstance(transform, Grid):
        return pa.array(
            [None if v is None else _grid(v, transform.grid_degrees) for v in col.to_pylist()],
            pa.string(),
        )
    raise ValueError(f"a dropped field is not delivered: {spec.name}")


def _pseudonymize(spec: FieldSpec, col: pa.Array, tokens: FlowTokens) -> pa.Array:
    if spec.type is FieldType.STRING_LIST:
        # Tokens hold no comma, so the list survives as one string column every reader has.
        return pa.array(
            [None if v is None else ",".join(tokens.token(t) for t in v) for v in col.to_pylist()],
            pa.string(),
        )
    # One token per distinct value, spread back by the dictionary's indices: a page holds
    # each user and device many times, and the Python work is per distinct value only.
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    encoded = pc.dictionary_encode(col)  # nulls stay null indices
    distinct = pa.array(tokens.tokens(encoded.dictionary.to_pylist()), pa.string())
    return pc.take(distinct, encoded.indices)


def _truncate(col: pa.Array, n: int) -> pa.Array:
    if pa.types.is_string(col.type):
        return pc.utf8_slice_codeunits(col, 0, n)
    if pa.types.is_integer(col.type):
        return pc.multiply(pc.divide(col, n), n)  # integer division: toward zero
    if pa.types.is_floating(col.type):
        return pc.multiply(pc.floor(pc.divide(col, float(n))), float(n))
    raise ValueError("truncate applies to strings and numbers")


def _generalize(spec: FieldSpec, col: pa.Array, g: Generalization) -> pa.Array:
    if g is Generalization.REGION:
        return pa.array([None if v is None else region_of(v) for v in col.to_pylist()], pa.string())
    if pa.types.is_date32(col.type) and g is Generalization.HOUR:
        raise ValueError("a date has no hour")
    if g is Generalization.DAY:
        return col.cast(pa.date32())
    if g is Generalization.HOUR:
        return pc.floor_temporal(col, unit="hour")
    stamp = col.cast(pa.timestamp("us", tz="UTC")) if pa.types.is_date32(col.type) else col
    return pc.strftime(stamp, format="%Y-%m" if g is Generalization.MONTH else "%Y")


def _geo_text(v: Any) -> str:
    lat, lon = (float(x) for x in v)
    return f"{lat:.6f},{lon:.6f}"


def _point(text: str) -> tuple[float, float]:
    lat, _, lon = text.partition(",")
    return float(lat), float(lon)


def region_of(text: str) -> str:
    lat, lon = _point(text)
    for name, lat_lo, lat_hi, lon_lo, lon_hi in REGION_BOXES:
        if lat_lo <= lat <= lat_hi and lon_lo <= lon <= lon_hi:
            return name
    return "other"


def _grid(text: str, step: float) -> str:
    lat, lon = _point(text)

    def corner(x: float) -> float:
        return float(int(x // step)) * step

    return f"{corner(lat):g},{corner(lon):g}"


def build_table(
    flow: Flow,
    ds: DatasetSpec,
    record_keys: Sequence[str],
    columns: Mapping[str, Sequence[Value | Any]],
    tokens: FlowTokens,
    schema: pa.Schema,
) -> tuple[pa.Table, list[bool]]:
    """One opened page as the rows the recipient receives (filtered, then transformed), and
    for each record of the page whether the filter kept it."""
    typed = {name: to_column(ds.field(name), columns[name]) for name in flow.fields}
    mask = row_mask(flow.source.filter, typed)
    keys: Sequence[str] = record_keys
    if mask is None:
        kept = [True] * len(record_keys)
    else:
        kept = [bool(m) for m in mask.to_pylist()]
        keys = [key for key, k in zip(record_keys, kept, strict=True) if k]
        typed = {name: pc.filter(col, mask) for name, col in typed.items()}
    n = len(keys)
    arrays = [
        pa.array(tokens.rows(keys), pa.string()),
        pa.array([UPSERT] * n, pa.string()),
    ]
    for name in flow.delivered:
        out = transform_column(ds.field(name), flow.fields[name], typed[name], tokens)
        arrays.append(out.cast(schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema), kept


def tombstone_table(row_tokens: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Rows that tell the recipient to delete what it holds under these row tokens."""
    n = len(row_tokens)
    arrays = [pa.array(list(row_tokens), pa.string()), pa.array([DELETE] * n, pa.string())]
    arrays += [pa.nulls(n, f.type) for f in list(schema)[2:]]
    return pa.Table.from_arrays(arrays, schema=schema)
