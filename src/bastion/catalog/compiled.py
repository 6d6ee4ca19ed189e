"""A dataset's row checks, compiled once per dataset: per-field coercers and a columnar path.

``validate_row`` is the contract: every declared field coerced, or an ``InputError`` naming
the file, row, dataset and field of the first problem (rows in order, fields in catalog
order). Ingest applies it to millions of rows, so this module builds, once per dataset:

* a coercer per field with a fast path for the value types that ingest sees most (exact
  ``str``, ``int``, ``float``, ``bool``, ``date``, ``datetime``), which falls back to
  ``coerce_value`` for anything else, so both agree on every input;
* a row check that loops over precomputed ``(name, coercer, missing message)`` triples;
* a column-wise check of an Arrow record batch (Parquet input) that tests whole columns
  (types, byte lengths, finiteness, domains, missing values) with Arrow compute and builds
  Python values from the raw buffers. When any column fails, or is of a shape the fast
  path does not know, the batch is checked again row by row, which raises exactly the
  error the per-row contract names.

Results come out as a :class:`ValidBatch`: row numbers plus one list of values per field,
the form the vault seals from.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from bastion.catalog.model import DatasetSpec, Domain, FieldSpec, FieldType
from bastion.catalog.values import MAX_COLUMN_NAME_SHOWN, BadValue, Value, coerce_value
from bastion.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

Coercer = Callable[[object], Value]

# Longest text form (what max_bytes limits) a value of these types can have; a field whose
# limit is at least this long needs no per-value size check for them.
_INT64_TEXT = 20  # "-9223372036854775808"
_FLOAT_TEXT = 24  # "-2.2250738585072014e-308"
_DATE_TEXT = 10
_DATETIME_TEXT = 32  # "9999-12-31 23:59:59.999999+00:00"
_POINT_TEXT = 2 * _FLOAT_TEXT + 4  # "(lat, lon)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


@dataclass(frozen=True)
class ValidBatch:
    """Checked rows, column by column: ``columns[name][i]`` is row ``numbers[i]``'s value.

    ``columns`` holds every declared field, in catalog order.
    """

    numbers: Sequence[int]
    columns: Mapping[str, Sequence[Value]]

    def __len__(self) -> int:
        return len(self.numbers)

    def rows(self) -> list[dict[str, Value]]:
        """The same rows as dicts, as ``validate_row`` returns them."""
        names = list(self.columns)
        return [
            dict(zip(names, values, strict=True))
            for values in zip(*self.columns.values(), strict=True)
        ]

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[int, Mapping[str, Value]]], names: Sequence[str]
    ) -> ValidBatch:
        """Columns of rows already checked (``validate_row`` output); nothing is re-checked."""
        return cls([n for n, _ in rows], {name: [row[name] for _, row in rows] for name in names})


# --- per-field coercers ------------------------------------------------------------------


def _size_error(size: int, limit: int) -> BadValue:
    return BadValue(f"value is {size} bytes; the field's limit is {limit}")


def _domain_test(domain: Domain | None) -> Callable[[object], bool] | None:
    if domain is None:
        return None
    if not domain.is_range:
        try:
            members = frozenset(domain.values)
        except TypeError:  # unhashable members: keep the domain's own test
            return domain.__contains__
        return members.__contains__
    return domain.__contains__


def compile_field(spec: FieldSpec) -> Coercer:
    """``coerce_value`` for one field, with the checks decided once instead of per value.

    Fast paths take only the exact builtin types (a subclass goes the general way) and do
    the same checks ``coerce_value`` does, in the same order, with the same messages.
    """
    limit = spec.max_bytes
    in_domain = _domain_test(spec.domain)
    domain_bad = "value is outside the field's declared domain"

    def general(raw: object) -> Value:
        return coerce_value(spec, raw)

    kind = spec.type
    if kind is FieldType.STRING:
        # coerce_value refuses text over 4 * limit + 64 bytes before parsing it, with its own
        # message; the fast path leaves those to it.
        guard = 4 * limit + 64

        def string(raw: object) -> Value:
            if raw.__class__ is not str:
                return general(raw)
            if not raw:
                return None
            text = raw
            size = len(text) if text.isascii() else -1
            if size < 0 or size > limit:
                if size < 0 or size > guard:
                    return general(raw)
                raise _size_error(size, limit)
            if in_domain is not None and not in_domain(text):
                raise BadValue(domain_bad)
            return text

        return string
    if kind is FieldType.INT:
        sized = limit < _INT64_TEXT

        def integer(raw: object) -> Value:
            if raw.__class__ is not int or sized:
                return general(raw)
            value = raw
            if not -(10**19) < value < 10**19:
                return general(raw)
            if in_domain is not None and not in_domain(value):
                raise BadValue(domain_bad)
            return value

        return integer
    if kind is FieldType.FLOAT:
        if limit < _FLOAT_TEXT or in_domain is not None:
            return general
        isfinite = math.isfinite

        def number(raw: object) -> Value:
            if raw.__class__ is float and isfinite(raw):
                return raw
            return general(raw)

        return number
    if kind is FieldType.DATE:
        if limit < _DATE_TEXT:
            return general

        def day(raw: object) -> Value:
            if raw.__class__ is not date:
                return general(raw)
            if in_domain is not None and not in_domain(raw):
                raise BadValue(domain_bad)
            return raw

        return day
    if kind is FieldType.TIMESTAMP:
        if limit < _DATETIME_TEXT or in_domain is not None:
            return general

        def timestamp(raw: object) -> Value:
            if raw.__class__ is not datetime:
                return general(raw)
            moment = raw
            tz = moment.tzinfo
            if tz is UTC:
                return moment
            return moment.replace(tzinfo=UTC) if tz is None else moment.astimezone(UTC)

        return timestamp
    if kind is FieldType.STRING_LIST:
        if in_domain is not None:
            return general

        def string_list(raw: object) -> Value:
            if raw.__class__ is not list:
                return general(raw)
            items: list[object] = raw
            # An upper bound of the JSON text's size: quotes and comma, and at most 6 bytes
            # per character (a \u00XX escape); only a list that may exceed the limit is
            # measured exactly.
            bound = 2
            for item in items:
                if item.__class__ is not str:
                    return general(raw)
                bound += 6 * len(item) + 3
            if bound > limit:
                return general(raw)
            return list(items)  # type: ignore[arg-type]

        return string_list
    if kind is FieldType.GEO:
        if limit < _POINT_TEXT or in_domain is not None:
            return general

        def point(raw: object) -> Value:
            cls = raw.__class__
            if cls is dict and len(raw) == 2:  # type: ignore[arg-type]
                lat, lon = raw.get("lat"), raw.get("lon")  # type: ignore[attr-defined]
            elif (cls is tuple or cls is list) and len(raw) == 2:  # type: ignore[arg-type]
                lat, lon = raw  # type: ignore[misc]
            else:
                return general(raw)
            if lat.__class__ is not float or lon.__class__ is not float:
                return general(raw)
            # NaN and infinities fail these comparisons and get coerce_value's message.
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                return general(raw)
            return (lat, lon)

        return point
    if kind is FieldType.BOOL:

        def boolean(raw: object) -> Value:
            if raw.__class__ is not bool or limit < 5 or in_domain is not None:
                return general(raw)
            return raw

        return boolean
    return general


# --- rows --------------------------------------------------------------------------------


class RowValidator:
    """``validate_row`` for one dataset, with everything that does not depend on the row
    decided once. Use :func:`row_validator` to get the shared instance of a dataset."""

    def __init__(self, dataset: DatasetSpec) -> None:
        self.dataset = dataset
        self.names = tuple(f.name for f in dataset.fields)
        self._known = frozenset(self.names)
        self._fields = tuple(
            (f.name, compile_field(f), _missing_message(dataset, f)) for f in dataset.fields
        )
        self._specs = {f.name: f for f in dataset.fields}

    def _error(self, reason: str, file: str, row: int, field: str | None) -> InputError:
        return InputError(reason, file=file, row=row, dataset=self.dataset.name, field=field)

    def _unknown_column(self, row: Mapping[str, object], file: str, row_number: int) -> None:
        for column in row:
            if not isinstance(column, str) or column not in self._known:
                shown = str(column)[:MAX_COLUMN_NAME_SHOWN]
                raise self._error(
                    "unknown column (not declared in the catalog)", file, row_number, shown
                )

    def values(self, row: Mapping[str, object], *, file: str, row_number: int) -> list[Value]:
        """The row's values in catalog order, or the ``InputError`` ``validate_row`` raises."""
        if not row.keys() <= self._known:
            self._unknown_column(row, file, row_number)
        get = row.get
        out: list[Value] = []
        add = out.append
        name = ""
        try:
            for name, coerce, missing in self._fields:
                value = coerce(get(name))
                if value is None and missing is not None:
                    raise self._error(missing, file, row_number, name)
                add(value)
        except BadValue as exc:
            raise self._error(str(exc), file, row_number, name) from None
        return out

    def validate(
        self, row: Mapping[str, object], *, file: str, row_number: int
    ) -> dict[str, Value]:
        return dict(
            zip(self.names, self.values(row, file=file, row_number=row_number), strict=True)
        )

    def batch(self, rows: Iterable[tuple[int, Mapping[str, object]]], *, file: str) -> ValidBatch:
        """Check rows in order; the first bad one raises."""
        numbers: list[int] = []
        checked: list[list[Value]] = []
        for number, raw in rows:
            checked.append(self.values(raw, file=file, row_number=number))
            numbers.append(number)
        if not checked:
            return ValidBatch(numbers, {name: [] for name in self.names})
        return ValidBatch(numbers, dict(zip(self.names, zip(*checked, strict=True), strict=True)))

    # --- Arrow ---------------------------------------------------------------------------

    def arrow(self, batch: pa.RecordBatch, *, file: str, first_row: int) -> ValidBatch:
        """Check a record batch whose rows are numbered from ``first_row``.

        Whole columns are checked with Arrow compute; if anything fails, the batch is
        checked row by row, which raises the first error in row order.
        """
        columns = self._arrow_columns(batch)
        numbers = range(first_row, first_row + batch.num_rows)
        if columns is not None:
            return ValidBatch(numbers, columns)
        return self.batch(zip(numbers, batch.to_pylist(), strict=True), file=file)

    def _arrow_columns(self, batch: pa.RecordBatch) -> dict[str, Sequence[Value]] | None:
        names = batch.schema.names
        if len(set(names)) != len(names) or not self._known.issuperset(names):
            return None
        present = set(names)
        out: dict[str, Sequence[Value]] = {}
        for name, coerce, missing in self._fields:
            if name in present:
                try:
                    values = _arrow_values(self._specs[name], coerce, batch.column(name))
                except (BadValue, ValueError, OverflowError, TypeError):
                    return None
                if values is None:
                    return None
            else:
                values = [None] * batch.num_rows
            if missing is not None and None in values:
                return None
            out[name] = values
        return out


def _missing_message(dataset: DatasetSpec, spec: FieldSpec) -> str | None:
    if spec.name == dataset.subject_key:
        return "missing subject id"
    if spec.name == dataset.record_id:
        return "missing record id"
    return None if spec.nullable else "missing value for a required field"


def _arrow_values(spec: FieldSpec, coerce: Coercer, column: pa.Array) -> Sequence[Value] | None:
    """A column's values as ``coerce`` would give them, or None to go row by row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, t = spec.type, column.type
    if kind is FieldType.STRING and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        if column.null_count < len(column):
            longest = pc.max(pc.binary_length(column)).as_py()
            if longest is not None and longest > spec.max_bytes:
                return None
        values = column.to_pylist()
        # An empty string is a missing value.
        values = [v or None for v in values]
        return _in_domain(spec, values)
    if kind is FieldType.FLOAT and pa.types.is_floating(t):
        if spec.max_bytes < _FLOAT_TEXT or spec.domain is not None:
            return None
        if pc.all(pc.is_finite(column)).as_py() is False:
            return None
        floats: list[Value] = column.to_pylist()
        return floats
    if kind is FieldType.INT and pa.types.is_integer(t):
        if spec.max_bytes < _INT64_TEXT:
            return None
        return _in_domain(spec, column.to_pylist())
    if kind is FieldType.BOOL and pa.types.is_boolean(t):
        return [coerce(v) for v in column.to_pylist()]
    if kind is FieldType.DATE and pa.types.is_date32(t):
        memo: dict[int, date] = {}
        days: list[Value] = []
        add = days.append
        for n in column.cast(pa.int32()).to_pylist():
            if n is None:
                add(None)
                continue
            d = memo.get(n)
            if d is None:
                d = memo[n] = date.fromordinal(_EPOCH_ORDINAL + n)
            add(d)
        return _in_domain(spec, days) if spec.max_bytes >= _DATE_TEXT else None
    if kind is FieldType.TIMESTAMP and pa.types.is_timestamp(t) and t.unit in _US_PER_UNIT:
        if spec.max_bytes < _DATETIME_TEXT or spec.domain is not None:
            return None
        # Arrow stores instants as UTC ticks whatever the column's zone; a naive column is
        # taken as UTC, as validate_row does. pyarrow's own conversion to datetime is far
        # slower (it builds a zone per value).
        scale = _US_PER_UNIT[t.unit]
        epoch, delta = _EPOCH, timedelta
        return [
            None if n is None else epoch + delta(microseconds=n * scale)
            for n in column.cast(pa.int64()).to_pylist()
        ]
    return [coerce(v) for v in column.to_pylist()]


def _in_domain(spec: FieldSpec, values: list[Value]) -> list[Value] | None:
    test = _domain_test(spec.domain)
    if test is None:
        return values
    if all(test(v) for v in set(values) if v is not None):
        return values
    return None


_cache: dict[int, tuple[DatasetSpec, RowValidator]] = {}
_cache_lock = threading.Lock()


def row_validator(dataset: DatasetSpec) -> RowValidator:
    """The compiled validator of a dataset, built on first use and kept."""
    entry = _cache.get(id(dataset))
    if entry is not None and entry[0] is dataset:
        return entry[1]
    validator = RowValidator(dataset)
    with _cache_lock:
        if len(_cache) > 256:
            _cache.clear()
        _cache[id(dataset)] = (dataset, validator)
    return validator


def validate_row(
    dataset: DatasetSpec, row: Mapping[str, object], *, file: str, row_number: int
) -> dict[str, Value]:
    """Return the row with every declared field coerced, or raise InputError saying where.

    Unknown columns are refused; then fields are checked in catalog order, and the first
    problem raises, naming file, row, dataset and field. The work is done by the dataset's
    compiled validator, built on first use.
    """
    return row_validator(dataset).validate(row, file=file, row_number=row_number)


__all__ = [
    "Coercer",
    "RowValidator",
    "ValidBatch",
    "compile_field",
    "row_validator",
    "validate_row",
]
