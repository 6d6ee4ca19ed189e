"""The fixed catalog of query templates, and the check that turns a request into a plan.

There is no free SQL and no user-defined function: a request names a template and fills in
parameters, each checked against the catalog's declared domains and the clean room's limits.
Errors here depend only on the request and on public declarations, never on the data, so
they can afford to be precise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.catalog import Catalog, DatasetSpec, FieldType
from bastion.cleanroom.config import CleanRoomConfig, Measure
from bastion.errors import InputError


class Template(StrEnum):
    COUNT = "count"
    DISTINCT_USERS = "distinct_users"
    SUM = "sum"
    MEAN = "mean"
    QUANTILES = "quantiles"
    CTR = "ctr"


TEMPLATE_HELP: dict[Template, str] = {
    Template.COUNT: "number of events",
    Template.DISTINCT_USERS: "number of distinct users (reach)",
    Template.SUM: "sum of a measure (clamped)",
    Template.MEAN: "mean of a measure (clamped)",
    Template.QUANTILES: "quantiles of a measure, e.g. median and p90 (clamped)",
    Template.CTR: "click-through rate: ad clicks / ad impressions",
}

# The parameters each template accepts besides template, epsilon, group_by, where, confidence.
_EXTRA_PARAMS: dict[Template, frozenset[str]] = {
    Template.COUNT: frozenset({"max_groups_per_user", "max_rows_per_group"}),
    Template.DISTINCT_USERS: frozenset({"max_groups_per_user"}),
    Template.SUM: frozenset({"max_groups_per_user", "max_rows_per_group", "measure", "clamp"}),
    Template.MEAN: frozenset({"max_groups_per_user", "max_rows_per_group", "measure", "clamp"}),
    Template.QUANTILES: frozenset(
        {"max_groups_per_user", "max_rows_per_group", "measure", "clamp", "quantiles", "bins"}
    ),
    Template.CTR: frozenset({"max_groups_per_user", "max_rows_per_group"}),
}
_COMMON = frozenset({"template", "epsilon", "group_by", "where", "confidence"})

CTR_CLICK = "ad_click"
CTR_IMPRESSION = "ad_impression"
EVENT_TYPE = "event_type"


class QueryRequest(BaseModel):
    """What an analyst sends. Anything not declared here is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(max_length=64)
    epsilon: float
    group_by: list[str] = Field(default_factory=list, max_length=8)
    where: dict[str, list[str]] = Field(default_factory=dict)
    measure: str | None = Field(default=None, max_length=64)
    quantiles: list[float] | None = Field(default=None, max_length=9)
    clamp: tuple[float, float] | None = None
    bins: int | None = None
    max_groups_per_user: int | None = None
    max_rows_per_group: int | None = None
    confidence: float | None = None


def parse_request(data: object) -> QueryRequest:
    """Validate raw JSON-like input into a request, with a clear error for the first problem."""
    try:
        return QueryRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "request"
        if err["type"] == "extra_forbidden":
            raise InputError(f"unknown parameter {where!r}") from None
        if err["type"] == "missing":
            raise InputError(f"missing parameter {where!r}") from None
        raise InputError(f"parameter {where!r}: {err['msg'].lower()}") from None


@dataclass(frozen=True)
class QueryPlan:
    """A checked query: everything the engines and the release layer need, nothing else."""

    template: Template
    dataset: str
    subject: str
    group_by: tuple[str, ...]
    # For each public grouping column its declared domain (as text); private keys map to None.
    domains: tuple[tuple[str, ...] | None, ...]
    where: tuple[tuple[str, tuple[str, ...]], ...]
    measure: Measure | None
    clamp_units: tuple[int, int]
    quantiles: tuple[float, ...]
    bins: int
    max_groups: int
    max_rows: int
    row_weight: int
    epsilon: float
    delta: float
    confidence: float

    @property
    def private_keys(self) -> bool:
        return any(d is None for d in self.domains)

    @property
    def public_group_count(self) -> int:
        return math.prod(len(d) for d in self.domains if d is not None)

    def parameters(self) -> dict[str, Any]:
        """The plan as recorded in the ledger (no data, only the request's resolved form)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "group_by": list(self.group_by),
            "where": {k: list(v) for k, v in self.where},
            "max_groups_per_user": self.max_groups,
            "epsilon": self.epsilon,
            "delta": self.delta,
        }
        if self.template is not Template.DISTINCT_USERS:
            out["max_rows_per_group"] = self.max_rows
        if self.measure is not None:
            out["measure"] = self.measure.column
            out["clamp"] = [u * self.measure.unit for u in self.clamp_units]
        if self.template is Template.QUANTILES:
            out["quantiles"] = list(self.quantiles)
            out["bins"] = self.bins
        return out


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _domain_text(ds: DatasetSpec, column: str) -> tuple[str, ...]:
    domain = ds.field(column).domain
    assert domain is not None  # the catalog loader guarantees it for public dimensions
    return tuple(_text(v) for v in domain.members())


def _bound(value: int | None, default: int, limit: int, name: str) -> int:
    if value is None:
        return default
    if not 1 <= value <= limit:
        raise InputError(f"parameter {name!r} must be between 1 and {limit}", field=name)
    return value


def compile_plan(request: QueryRequest, catalog: Catalog, config: CleanRoomConfig) -> QueryPlan:
    """Check a request against the templates, the catalog and the limits; return its plan."""
    try:
        template = Template(request.template)
    except ValueError:
        known = ", ".join(t.value for t in Template)
        raise InputError(f"unknown template {request.template!r} (known: {known})") from None
    given = {k for k, v in request.model_dump().items() if v not in (None, [], {})}
    for name in sorted(given - _COMMON - _EXTRA_PARAMS[template]):
        raise InputError(f"parameter {name!r} does not apply to template {template.value!r}")

    eps = request.epsilon
    if math.isnan(eps) or eps <= 0:
        raise InputError("epsilon must be greater than 0", field="epsilon")
    if eps > config.max_epsilon_per_query:
        raise InputError(
            f"epsilon must be at most {config.max_epsilon_per_query:g} per query", field="epsilon"
        )
    confidence = config.confidence if request.confidence is None else request.confidence
    if not 0.5 <= confidence < 1:
        raise InputError("confidence must be in [0.5, 1)", field="confidence")

    ds = catalog.dataset(config.dataset)
    group_by = tuple(request.group_by)
    if len(group_by) > config.max_group_by:
        raise InputError(f"at most {config.max_group_by} grouping columns", field="group_by")
    if len(set(group_by)) != len(group_by):
        raise InputError("a grouping column is named twice", field="group_by")
    domains: list[tuple[str, ...] | None] = []
    for col in group_by:
        if col in ds.public_dimensions:
            domains.append(_domain_text(ds, col))
        elif col in ds.private_keys:
            domains.append(None)
        else:
            raise InputError(
                "cannot group by this field: it is not a public dimension or private key "
                f"of the catalog (public: {', '.join(ds.public_dimensions)}; "
                f"private keys: {', '.join(ds.private_keys) or 'none'})",
                dataset=ds.name,
                field=col,
            )
    if template is Template.CTR and EVENT_TYPE in group_by:
        raise InputError("the ctr template cannot be grouped by event type", field=EVENT_TYPE)
    public_groups = math.prod(len(d) for d in domains if d is not None)
    if public_groups > config.max_public_groups:
        raise InputError(
            f"the grouping has {public_groups} public groups; the limit is "
            f"{config.max_public_groups}",
            field="group_by",
        )

    where: list[tuple[str, tuple[str, ...]]] = []
    for col, values in sorted(request.where.items()):
        if col not in ds.public_dimensions:
            raise InputError("filters may only use public dimensions", dataset=ds.name, field=col)
        if template is Template.CTR and col == EVENT_TYPE:
            raise InputError("the ctr template fixes the event type", field=col)
        domain = set(_domain_text(ds, col))
        if not values:
            raise InputError("a filter needs at least one value", field=col)
        for v in values:
            if v not in domain:
                raise InputError("filter value is outside the declared domain", field=col)
        where.append((col, tuple(sorted(set(values)))))
    if template is Template.CTR:
        domain = set(_domain_text(ds, EVENT_TYPE))
        if not {CTR_CLICK, CTR_IMPRESSION} <= domain:
            raise InputError("the catalog declares no ad click/impression event types")
        where.append((EVENT_TYPE, (CTR_CLICK, CTR_IMPRESSION)))

    measure: Measure | None = None
    clamp_units = (0, 0)
    if template in (Template.SUM, Template.MEAN, Template.QUANTILES):
        declared = config.measures.get(ds.name, {})
        if request.measure is None:
            raise InputError(
                f"template {template.value!r} needs a measure "
                f"({', '.join(declared) or 'none declared'})",
                field="measure",
            )
        if request.measure not in declared:
            raise InputError(
                f"unknown measure (declared: {', '.join(declared)})",
                dataset=ds.name,
                field=request.measure,
            )
        measure = declared[request.measure]
        if ds.field(measure.column).type not in (FieldType.INT, FieldType.FLOAT):
            raise InputError("measure is not numeric in the catalog", field=measure.column)
        lo, hi = request.clamp if request.clamp is not None else measure.default_clamp
        if not (math.isfinite(lo) and math.isfinite(hi)) or not (
            measure.low <= lo < hi <= measure.high
        ):
            raise InputError(
                f"clamp must satisfy {measure.low:g} <= low < high <= {measure.high:g}",
                field="clamp",
            )
        clamp_units = (measure.to_units(lo), measure.to_units(hi))
        if clamp_units[0] >= clamp_units[1]:
            raise InputError("clamp range is narrower than the measure's unit", field="clamp")

    quantiles: tuple[float, ...] = ()
    bins = 0
    if template is Template.QUANTILES:
        quantiles = tuple(request.quantiles or (0.5, 0.9))
        for q in quantiles:
            if not 0 < q < 1:
                raise InputError("quantiles must be strictly between 0 and 1", field="quantiles")
        bins = request.bins if request.bins is not None else config.default_quantile_bins
        width = clamp_units[1] - clamp_units[0]
        if not 2 <= bins <= min(config.max_quantile_bins, width):
            raise InputError(
                f"bins must be between 2 and {min(config.max_quantile_bins, width)}",
                field="bins",
            )

    limits = config.bounds
    max_groups = _bound(
        request.max_groups_per_user,
        limits.default_max_groups,
        limits.max_groups,
        "max_groups_per_user",
    )
    max_rows = (
        1
        if template is Template.DISTINCT_USERS
        else _bound(
            request.max_rows_per_group,
            limits.default_max_rows,
            limits.max_rows,
            "max_rows_per_group",
        )
    )
    private = any(d is None for d in domains)
    return QueryPlan(
        template=template,
        dataset=ds.name,
        subject=ds.subject_key,
        group_by=group_by,
        domains=tuple(domains),
        where=tuple(where),
        measure=measure,
        clamp_units=clamp_units,
        quantiles=quantiles,
        bins=bins,
        max_groups=max_groups,
        max_rows=max_rows,
        row_weight=config.row_weight,
        epsilon=eps,
        delta=config.delta_per_query if private else 0.0,
        confidence=confidence,
    )
