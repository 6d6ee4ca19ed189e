"""Flow declarations: the YAML an administrator loads, as a validated, typed model.

A flow says who receives what: a recipient (an entity with a principal's attributes, so that
Cedar decides on it), one source dataset, a row filter, a transform for every field it
reads, a kind (``records`` or ``aggregate``), a schedule, a destination and the recipient's
HPKE public key. Everything is named explicitly: a field the declaration does not list is
never read, so the declaration is an allow-list.

Parsing is pure (text in, model out); an error names the file, the flow and the field. What
may *not* be declared (a protected field, an identifier in clear, a recipient that policy
denies...) is decided later, by ``checks``, against the catalog and the policy in force.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.egress.destinations.base import DestinationConfig
from bastion.errors import InputError
from bastion.events import canonical

_NAME = r"^[a-z][a-z0-9-]{0,62}$"
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL = timedelta(minutes=1)
MAX_INTERVAL = timedelta(days=366)


class FlowError(InputError):
    """A flow declaration that cannot be parsed: names the file, the flow and the field."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        flow: str | None = None,
        field: str | None = None,
    ) -> None:
        self.flow = flow
        super().__init__(f"flow {flow!r}: {reason}" if flow else reason, file=file, field=field)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Recipient(_Strict):
    """Who receives the flow: attributes like a principal's, decided on by Cedar."""

    id: str = Field(pattern=_NAME)
    employer: str = Field(min_length=1, max_length=128)
    employer_country: str = Field(pattern=r"^[A-Z]{2}$")
    location_country: str = Field(pattern=r"^[A-Z]{2}$")
    public_key: str = Field(description="the recipient's X25519 HPKE key, base64 of 32 bytes")

    @field_validator("public_key")
    @classmethod
    def _x25519(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except ValueError:
            raise ValueError("is not base64") from None
        if len(raw) != 32:
            raise ValueError("is not a 32-byte X25519 public key")
        if raw == bytes(32):
            raise ValueError("is the all-zero X25519 key")
        return v

    def public_key_bytes(self) -> bytes:
        return base64.b64decode(self.public_key)


class FilterOp(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IS_NULL = "is_null"
    NOT_NULL = "not_null"


Scalar = str | int | float | bool


class Condition(_Strict):
    """One condition of the row filter; a row is delivered when all of them hold."""

    field: str = Field(min_length=1)
    op: FilterOp
    value: Scalar | list[Scalar] | None = None

    @field_validator("value")
    @classmethod
    def _shape(cls, v: Scalar | list[Scalar] | None) -> Scalar | list[Scalar] | None:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list matches nothing")
        return v

    def check_shape(self) -> str | None:
        """Why this condition's value does not suit its operator, or None."""
        if self.op in (FilterOp.IS_NULL, FilterOp.NOT_NULL):
            return None if self.value is None else f"{self.op.value} takes no value"
        if self.op in (FilterOp.IN, FilterOp.NOT_IN):
            return None if isinstance(self.value, list) else f"{self.op.value} takes a list"
        if self.value is None or isinstance(self.value, list):
            return f"{self.op.value} takes one value"
        return None


class Generalization(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    YEAR = "year"
    REGION = "region"  # a location to its coarse market region


class Keep(_Strict):
    keep: Literal[True] = True


class Pseudonymize(_Strict):
    pseudonymize: Literal[True] = True


class Drop(_Strict):
    """Read (for the row filter) but never delivered."""

    drop: Literal[True] = True


class Generalize(_Strict):
    generalize: Generalization


class Grid(_Strict):
    """A location to the south-west corner of its cell of ``grid_degrees``."""

    grid_degrees: float = Field(ge=0.1, le=45.0)


class Truncate(_Strict):
    """A string to its first ``truncate`` characters; a number down to a multiple of it."""

    truncate: int = Field(ge=1, le=1_000_000)


Transform = Keep | Pseudonymize | Drop | Generalize | Grid | Truncate

_SHORTHAND: dict[str, Transform] = {
    "keep": Keep(),
    "pseudonymize": Pseudonymize(),
    "drop": Drop(),
}


def transform_name(t: Transform) -> str:
    """The transform as one word, for manifests, the ledger and tables."""
    if isinstance(t, Generalize):
        return f"generalize:{t.generalize.value}"
    if isinstance(t, Grid):
        return f"grid:{t.grid_degrees:g}"
    if isinstance(t, Truncate):
        return f"truncate:{t.truncate}"
    return next(iter(t.model_dump()))


_TRANSFORM_HELP = (
    "keep, pseudonymize, drop, {generalize: hour|day|month|year|region}, "
    "{grid_degrees: N} or {truncate: N}"
)
_BY_KEY: dict[str, type[_Strict]] = {
    "keep": Keep,
    "pseudonymize": Pseudonymize,
    "drop": Drop,
    "generalize": Generalize,
    "grid_degrees": Grid,
    "truncate": Truncate,
}


def _transform(name: str, t: Any) -> Transform:
    """One field's transform, by its one key (so an error names the right member)."""
    if isinstance(t, str) and t in _SHORTHAND:
        return _SHORTHAND[t]
    if isinstance(t, Mapping) and len(t) == 1:
        key = next(iter(t))
        model = _BY_KEY.get(str(key))
        if model is not None:
            try:
                return model.model_validate(dict(t))  # type: ignore[return-value]
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"{name}: {key} {err['msg'].lower()}") from None
    raise ValueError(f"{name}: a transform is {_TRANSFORM_HELP}")


class Source(_Strict):
    dataset: str = Field(min_length=1)
    mode: Literal["incremental", "full"] = "incremental"
    filter: tuple[Condition, ...] = ()


class Schedule(_Strict):
    every: str = Field(description="an interval: 30m, 6h, 1d")

    @field_validator("every")
    @classmethod
    def _interval(cls, v: str) -> str:
        m = _DURATION.match(v)
        if m is None:
            raise ValueError("must be a number and a unit: s, m, h or d (for example 6h)")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if not MIN_INTERVAL.total_seconds() <= seconds <= MAX_INTERVAL.total_seconds():
            raise ValueError("must be between 1m and 366d")
        return v

    @property
    def interval(self) -> timedelta:
        m = _DURATION.match(self.every)
        assert m is not None
        return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


class Aggregate(_Strict):
    """An aggregate flow: DP counts and sums by public dimensions, through the clean room's
    release layer, with the flow's own budget."""

    group_by: tuple[str, ...] = Field(min_length=1)
    count: bool = True
    sums: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="field -> (lower, upper) clamping bounds"
    )
    max_records_per_subject: int | None = Field(default=None, ge=1, le=10_000)
    epsilon_per_run: float = Field(gt=0, le=10)
    epsilon_budget: float = Field(gt=0, le=1000, description="the flow's own, persistent")


class RestrictedTransaction(_Strict):
    """The flow is a restricted transaction of 28 CFR 202.401, allowed under CISA's security
    requirements: the bulk threshold does not refuse it, and CISA's data-level controls are
    enforced instead (``checks``)."""

    basis: str = Field(min_length=1, max_length=512, description="the agreement or filing")


class Flow(_Strict):
    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    description: str = ""
    kind: Literal["records", "aggregate"]
    recipient: Recipient
    source: Source
    fields: dict[str, Transform] = Field(min_length=1)
    aggregate: Aggregate | None = None
    schedule: Schedule
    destination: DestinationConfig
    joinable_with: tuple[str, ...] = ()
    restricted_transaction: RestrictedTransaction | None = None

    @field_validator("fields", mode="before")
    @classmethod
    def _transforms(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        return {name: _transform(name, t) for name, t in v.items()}

    @property
    def delivered(self) -> list[str]:
        """The fields a recipient receives, by name (drops are only read). By name, not in
        declaration order: the declaration's digest is over canonical JSON, which has none."""
        return sorted(name for name, t in self.fields.items() if not isinstance(t, Drop))

    @property
    def token_scope(self) -> str:
        """Whose tokens these are: flows share one scope only when declared joinable, and a
        restricted transaction's tokens are per recipient as well (CISA's data-level rule)."""
        group = min((self.name, *self.joinable_with))
        if self.restricted_transaction is not None:
            return f"{group}@{self.recipient.id}"
        return group

    def declaration(self) -> dict[str, Any]:
        """The declaration as plain JSON data (what its digest is computed over)."""
        return self.model_dump(mode="json", exclude_none=True)

    def sha256(self) -> str:
        return hashlib.sha256(canonical(self.declaration())).hexdigest()


class FlowFile(_Strict):
    format: Literal[1] = 1
    flows: tuple[Flow, ...] = Field(min_length=1)


def parse_flows(text: str | bytes, *, source: str = "<flows>") -> list[Flow]:
    """Parse a flow file. Raises FlowError naming the file, the flow and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise FlowError(f"is not valid YAML{where}", file=source, field=None) from None
    if not isinstance(data, Mapping):
        raise FlowError("must be a mapping with a 'flows' list", file=source, field=None)
    try:
        parsed = FlowFile.model_validate(data)
    except ValidationError as exc:
        raise _flow_error(exc, data, source) from None
    names = [f.name for f in parsed.flows]
    for name in names:
        if names.count(name) > 1:
            raise FlowError("is declared twice in the file", file=source, flow=name, field=None)
    for flow in parsed.flows:
        _check_shape(flow, source)
    return list(parsed.flows)


def flow_from_declaration(data: Mapping[str, Any], *, source: str = "<stored>") -> Flow:
    """A flow from its stored declaration (``Flow.declaration()``)."""
    try:
        return Flow.model_validate(data)
    except ValidationError as exc:
        raise _flow_error(exc, {"flows": [data]}, source) from None


def _check_shape(flow: Flow, source: str) -> None:
    """What the model alone cannot say: the kind's own section, and filter shapes."""

    def fail(reason: str, field: str) -> FlowError:
        return FlowError(reason, file=source, flow=flow.name, field=field)

    if flow.kind == "aggregate" and flow.aggregate is None:
        raise fail("an aggregate flow needs an 'aggregate' section", "aggregate")
    if flow.kind == "records" and flow.aggregate is not None:
        raise fail("a records flow has no 'aggregate' section", "aggregate")
    for i, cond in enumerate(flow.source.filter):
        problem = cond.check_shape()
        if problem:
            raise fail(problem, f"source.filter[{i}].value")
        if cond.field not in flow.fields:
            raise fail(
                "a filter reads only fields the flow declares (add it with 'drop')",
                f"source.filter[{i}].field",
            )
    if flow.name in flow.joinable_with:
        raise fail("a flow is always joinable with itself", "joinable_with")
    if not flow.delivered:
        raise fail("delivers no field", "fields")


def _flow_error(exc: ValidationError, data: Mapping[str, Any], source: str) -> FlowError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    flow: str | None = None
    if len(loc) >= 2 and loc[0] == "flows" and loc[1].isdigit():
        raw = data.get("flows")
        if isinstance(raw, list) and int(loc[1]) < len(raw) and isinstance(raw[int(loc[1])], dict):
            name = raw[int(loc[1])].get("name")
            flow = str(name) if name is not None else f"#{int(loc[1]) + 1}"
        loc = loc[2:]
    # Pydantic names the union member it tried in the path ("Keep", "files"): drop those.
    path = ".".join(p for p in loc if not (p[:1].isupper() or p in _UNION_TAGS))
    message = str(err["msg"]).removeprefix("Value error, ")
    return FlowError(message, file=source, flow=flow, field=path or None)


_UNION_TAGS = {"files", "nats", "http", "function-after[_url(), str]"}
