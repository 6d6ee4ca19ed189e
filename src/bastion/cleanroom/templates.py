"""The check that turns a request into a plan, over the registered templates.

There is no free SQL and no user-defined function: a request names a template and fills in
parameters, each checked against the catalog's declared domains and the clean room's limits.
Errors here depend only on the request and on public declarations, never on the data, so
they can afford to be precise. The checks every template shares are here; each template's
own are in its file (``cleanroom/builtins/``), which registers it (``plan.register_template``).
"""

from __future__ import annotations

import math
from typing import Final

from bastion.catalog import Catalog, FieldType
from bastion.cleanroom.builtins import (
    count,
    ctr,
    distinct_users,
    measure_mean,
    measure_sum,
    quantiles,
)
from bastion.cleanroom.config import CleanRoomConfig, Measure
from bastion.cleanroom.plan import (
    QueryPlan,
    QueryRequest,
    QueryTemplate,
    domain_text,
    parse_request,
    registered_templates,
    template_named,
)
from bastion.errors import InputError


class Template:
    """The shipped templates, for code that names one (``plan.template is Template.CTR``)."""

    COUNT: Final[QueryTemplate] = count.TEMPLATE
    DISTINCT_USERS: Final[QueryTemplate] = distinct_users.TEMPLATE
    SUM: Final[QueryTemplate] = measure_sum.TEMPLATE
    MEAN: Final[QueryTemplate] = measure_mean.TEMPLATE
    QUANTILES: Final[QueryTemplate] = quantiles.TEMPLATE
    CTR: Final[QueryTemplate] = ctr.TEMPLATE


_COMMON = frozenset({"template", "epsilon", "group_by", "where", "confidence"})
# Every template bounds the groups a user contributes to.
_ALWAYS = frozenset({"max_groups_per_user"})


def _bound(value: int | None, default: int, limit: int, name: str) -> int:
    if value is None:
        return default
    if not 1 <= value <= limit:
        raise InputError(f"parameter {name!r} must be between 1 and {limit}", field=name)
    return value


def compile_plan(request: QueryRequest, catalog: Catalog, config: CleanRoomConfig) -> QueryPlan:
    """Check a request against the templates, the catalog and the limits; return its plan."""
    template = template_named(request.template)
    given = {k for k, v in request.model_dump().items() if v not in (None, [], {})}
    for name in sorted(given - _COMMON - _ALWAYS - template.parameters):
        raise InputError(f"parameter {name!r} does not apply to template {template.name!r}")

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
            domains.append(domain_text(ds, col))
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
    for col in sorted(template.fixed_columns.intersection(group_by)):
        raise InputError(
            f"the {template.name} template cannot be grouped by {col.replace('_', ' ')}",
            field=col,
        )
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
        if col in template.fixed_columns:
            raise InputError(
                f"the {template.name} template fixes the {col.replace('_', ' ')}", field=col
            )
        domain = set(domain_text(ds, col))
        if not values:
            raise InputError("a filter needs at least one value", field=col)
        for v in values:
            if v not in domain:
                raise InputError("filter value is outside the declared domain", field=col)
        where.append((col, tuple(sorted(set(values)))))

    measure: Measure | None = None
    clamp_units = (0, 0)
    if "measure" in template.parameters:
        declared = config.measures.get(ds.name, {})
        if request.measure is None:
            raise InputError(
                f"template {template.name!r} needs a measure "
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

    limits = config.bounds
    max_groups = _bound(
        request.max_groups_per_user,
        limits.default_max_groups,
        limits.max_groups,
        "max_groups_per_user",
    )
    max_rows = (
        _bound(
            request.max_rows_per_group,
            limits.default_max_rows,
            limits.max_rows,
            "max_rows_per_group",
        )
        if "max_rows_per_group" in template.parameters
        else 1
    )
    private = any(d is None for d in domains)
    plan = QueryPlan(
        template=template,
        dataset=ds.name,
        subject=ds.subject_key,
        group_by=group_by,
        domains=tuple(domains),
        where=tuple(where),
        measure=measure,
        clamp_units=clamp_units,
        quantiles=(),
        bins=0,
        max_groups=max_groups,
        max_rows=max_rows,
        row_weight=config.row_weight,
        epsilon=eps,
        delta=config.delta_per_query if private else 0.0,
        confidence=confidence,
    )
    return template.finish(plan, request, ds, config)


__all__ = [
    "QueryPlan",
    "QueryRequest",
    "QueryTemplate",
    "Template",
    "compile_plan",
    "parse_request",
    "registered_templates",
]
