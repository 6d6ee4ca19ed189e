"""Check and coerce one input value against its field's declaration.

CSV gives every value as text; JSONL and Parquet give typed values. Both come out as the same
Python values: ``str``, ``int``, ``float``, ``bool``, ``date``, UTC ``datetime``,
``list[str]`` and ``(lat, lon)`` tuples. An empty string is a missing value.

Error messages name the file, row, dataset and field, and never carry the value itself:
the value may be protected.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from bastion.catalog.model import FieldSpec, FieldType

Value = str | int | float | bool | date | datetime | list[str] | tuple[float, float] | None

_INT_RE = re.compile(r"^[+-]?\d{1,19}$")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
MAX_COLUMN_NAME_SHOWN = 64


class BadValue(ValueError):
    """A value did not fit; the message is safe (it never quotes the value)."""


def _kind(value: object) -> str:
    return type(value).__name__


def _as_string(v: object) -> str:
    if isinstance(v, str):
        return v
    raise BadValue(f"expected a string, got {_kind(v)}")


def _as_int(v: object) -> int:
    if isinstance(v, str):
        if not _INT_RE.match(v.strip()):
            raise BadValue("expected an integer")
        return int(v.strip())
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    raise BadValue(f"expected an integer, got {_kind(v)}")


def _as_float(v: object) -> float:
    if isinstance(v, str):
        try:
            out = float(v.strip())
        except ValueError:
            raise BadValue("expected a number") from None
    elif isinstance(v, numbers.Real) and not isinstance(v, bool):
        out = float(v)
    else:
        raise BadValue(f"expected a number, got {_kind(v)}")
    if not math.isfinite(out):
        raise BadValue("expected a finite number")
    return out


def _as_bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise BadValue("expected true or false")
    raise BadValue(f"expected a boolean, got {_kind(v)}")


def _as_date(v: object) -> date:
    if isinstance(v, datetime):
        raise BadValue("expected a date, got a timestamp")
    if isinstance(v, date):
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v.strip())
        except ValueError:
            raise BadValue("expected an ISO 8601 date (YYYY-MM-DD)") from None
    raise BadValue(f"expected a date, got {_kind(v)}")


def _as_timestamp(v: object) -> datetime:
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.strip())
        except ValueError:
            raise BadValue("expected an ISO 8601 timestamp") from None
    if not isinstance(v, datetime):
        raise BadValue(f"expected a timestamp, got {_kind(v)}")
    # A timestamp without an offset is taken as UTC, which is what Parquet's naive
    # timestamps and the synthetic platform both mean.
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


def _as_string_list(v: object) -> list[str]:
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            try:
                v = json.loads(text)
            except json.JSONDecodeError:
                raise BadValue("expected a JSON array of strings") from None
        else:
            v = [part.strip() for part in text.split(";") if part.strip()]
    if not isinstance(v, list | tuple):
        raise BadValue(f"expected a list of strings, got {_kind(v)}")
    if not all(isinstance(x, str) for x in v):
        raise BadValue("expected a list of strings")
    return list(v)


def _as_geo(v: object) -> tuple[float, float]:
    if isinstance(v, str):
        text = v.strip()
        if text.startswith(("[", "{")):
            try:
                v = json.loads(text)
            except json.JSONDecodeError:
                raise BadValue("expected 'lat,lon' or a JSON point") from None
        else:
            v = text.split(",")
    if isinstance(v, Mapping):
        if set(v) != {"lat", "lon"}:
            raise BadValue("expected a point with exactly 'lat' and 'lon'")
        pair: list[Any] = [v["lat"], v["lon"]]
    elif isinstance(v, list | tuple):
        pair = list(v)
    else:
        raise BadValue(f"expected a point (lat, lon), got {_kind(v)}")
    if len(pair) != 2:
        raise BadValue("expected a point with two coordinates (lat, lon)")
    lat, lon = (_as_float(x) for x in pair)
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise BadValue("point is outside [-90, 90] x [-180, 180]")
    return (lat, lon)


_COERCE: dict[FieldType, Callable[[object], Value]] = {
    FieldType.STRING: _as_string,
    FieldType.INT: _as_int,
    FieldType.FLOAT: _as_float,
    FieldType.BOOL: _as_bool,
    FieldType.DATE: _as_date,
    FieldType.TIMESTAMP: _as_timestamp,
    FieldType.STRING_LIST: _as_string_list,
    FieldType.GEO: _as_geo,
}


def value_size(value: Value) -> int:
    """Bytes a value occupies in its canonical text form (what max_bytes limits)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return len(str(value).encode("utf-8"))


def coerce_value(spec: FieldSpec, raw: object) -> Value:
    """Coerce one value for ``spec``; raises ``ValueError`` with a safe message."""
    if raw is None or (isinstance(raw, str) and raw == ""):
        return None
    if isinstance(raw, str) and len(raw.encode("utf-8")) > 4 * spec.max_bytes + 64:
        # Refuse absurd input before parsing it.
        raise BadValue(f"value is larger than the field's limit of {spec.max_bytes} bytes")
    value = _COERCE[spec.type](raw)
    size = value_size(value)
    if size > spec.max_bytes:
        raise BadValue(f"value is {size} bytes; the field's limit is {spec.max_bytes}")
    if spec.domain is not None and value not in spec.domain:
        raise BadValue("value is outside the field's declared domain")
    return value


def to_jsonable(value: Value) -> object:
    """A coerced value as plain JSON (dates and timestamps as ISO 8601 text, points as lists)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [value[0], value[1]]
    return value
