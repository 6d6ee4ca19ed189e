"""What a query is: the analyst's request, the checked plan, and the template protocol.

A template is one object (``QueryTemplate``): its parameters and checks, the bounded
aggregates it asks the engines for (``Aggregates``, which ``sql.py`` turns into DuckDB and
Spark SQL), and how the release layer noises them and shapes the answer (its sensitivities).
Templates are registered by name in one registry here; the shipped ones live one per file in
``cleanroom/builtins/``, so a new template is one new file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.catalog import DatasetSpec
from bastion.cleanroom.config import CleanRoomConfig, Measure
from bastion.errors import InputError

if TYPE_CHECKING:  # types only: the release layer imports this module
    from bastion.cleanroom.release import Releaser, ResultRow


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


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def domain_text(ds: DatasetSpec, column: str) -> tuple[str, ...]:
    """A public dimension's declared domain, as the text the engines compare with."""
    domain = ds.field(column).domain
    assert domain is not None  # the catalog loader guarantees it for public dimensions
    return tuple(_text(v) for v in domain.members())


@dataclass(frozen=True)
class Aggregates:
    """The bounded per-group aggregates a template needs from an engine.

    Every query counts rows (``rows_w``) and users; a template adds the clamped measure's
    sum (``total``), the rows matching one public value (``flag``: column and value, both from
    the catalog, counted into ``clicks_w``), or per-bin weights of the measure instead
    (``histogram``)."""

    total: bool = False
    flag: tuple[str, str] | None = None
    histogram: bool = False


@dataclass(frozen=True)
class QueryPlan:
    """A checked query: everything the engines and the release layer need, nothing else."""

    template: QueryTemplate
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
        if "max_rows_per_group" in self.template.parameters:
            out["max_rows_per_group"] = self.max_rows
        if self.measure is not None:
            out["measure"] = self.measure.column
            out["clamp"] = [u * self.measure.unit for u in self.clamp_units]
        out.update(self.template.recorded(self))
        return out


class QueryTemplate(Protocol):
    """One query template. Subclass it and set the attributes; the methods have defaults."""

    name: str
    summary: str
    # Parameters it accepts besides template, epsilon, group_by, where, confidence and
    # max_groups_per_user. With "measure" it needs one (and "clamp" applies); without
    # "max_rows_per_group" each user counts one row per group.
    parameters: frozenset[str]
    # Columns the template fixes itself: a request may neither group nor filter by them.
    fixed_columns: frozenset[str] = frozenset()

    def finish(
        self,
        plan: QueryPlan,
        request: QueryRequest,
        dataset: DatasetSpec,
        config: CleanRoomConfig,
    ) -> QueryPlan:
        """The template's own checks, once the shared ones passed; the plan it answers."""
        return plan

    def recorded(self, plan: QueryPlan) -> dict[str, Any]:
        """What the ledger records of the template's own parameters."""
        return {}

    def aggregates(self, plan: QueryPlan) -> Aggregates:
        """What the engines compute for it (bounded, integer, per group)."""
        return Aggregates()

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        """Noise the bounded aggregates (``r.agg``) with ``r``'s mechanisms, calibrated to the
        template's sensitivities; the answer's rows and how many groups it released."""
        ...


_REGISTRY: dict[str, QueryTemplate] = {}


def register_template(template: QueryTemplate) -> QueryTemplate:
    """Make a template answerable by name. A name is registered once (fail closed)."""
    known = _REGISTRY.get(template.name)
    if known is not None and known is not template:
        raise ValueError(f"a template named {template.name!r} is already registered")
    _REGISTRY[template.name] = template
    return template


def unregister_template(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered_templates() -> tuple[QueryTemplate, ...]:
    return tuple(_REGISTRY.values())


def template_named(name: str) -> QueryTemplate:
    template = _REGISTRY.get(name)
    if template is None:
        known = ", ".join(_REGISTRY)
        raise InputError(f"unknown template {name!r} (known: {known})")
    return template
