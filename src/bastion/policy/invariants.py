"""Policy invariants: what a custodian declares must hold, checked before a policy set loads.

An invariant names a part of the request space (``when``: principal, action, field and
context conditions) and what every request there must get (``expect``):

* ``deny`` — nothing in the scope is ever allowed, in any context;
* ``{at_most: <transform>}`` — if allowed, the field leaves no more revealed than that;
* ``{only_if_allowed_with: {context: {...}}}`` — allowed only if the same request, with those
  values changed, is allowed too: e.g. raising ``context.break_glass`` never opens anything.

``require`` lists several (``when``, ``expect``) pairs under one invariant. A principal
condition may be negated with ``not`` (a conjunction). Values: a scalar (equals), a list (one
of), ``{min: n}`` / ``{max: n}`` for numbers, ``{not_in: [...]}``.

``check_invariants`` searches the whole finite request space (``policy/symbolic.py``) and
returns, for each broken invariant, a counterexample: the principal (token attributes and what
Bastion derived), action, field and context, re-checked with the whole policy set.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bastion.errors import InputError
from bastion.policy.compiler import PACK_PACKAGE, CompiledPolicies, PolicyRejected
from bastion.policy.principal import DEFAULT_PRINCIPAL_CONFIG, PrincipalConfig
from bastion.policy.symbolic import (
    ACTION,
    CONTEXT_ATTRS,
    FIELD_ATTRS,
    PRINCIPAL_KINDS,
    UNKNOWN,
    Copy,
    Literals,
    PolicyModel,
    Search,
    SymbolicError,
    Value,
    VarName,
    build_model,
    decide,
    read_policies,
)
from bastion.policy.vocabulary import MAX_APPROVERS, RELEASE_ACTIONS, Transform

INVARIANTS_FILE = "invariants.yaml"
SOLVER_TIME_LIMIT_S = 60.0

Scalar = str | int | bool


class Range(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int | None = None
    max: int | None = None
    not_in: tuple[Scalar, ...] | None = None


Condition = Scalar | list[Scalar] | Range


class Scope(BaseModel):
    """The part of the request space an expectation talks about."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    principal: dict[str, Any] = Field(default_factory=dict)
    action: list[str] | None = None
    resource: dict[str, Condition] = Field(default_factory=dict)
    context: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _actions(cls, v: list[str] | None) -> list[str] | None:
        known = {a.value for a in RELEASE_ACTIONS}
        for name in v or ():
            if name not in known:
                raise ValueError(
                    f"unknown field action {name!r} (known: {', '.join(sorted(known))})"
                )
        return v

    @field_validator("resource", "context")
    @classmethod
    def _attributes(cls, v: dict[str, Condition], info: ValidationInfo) -> dict[str, Condition]:
        known, what = (
            (FIELD_ATTRS, "field")
            if info.field_name == "resource"
            else (
                CONTEXT_ATTRS,
                "context",
            )
        )
        for name in v:
            if name not in known:
                raise ValueError(f"unknown {what} attribute {name!r}")
        return v

    @field_validator("principal")
    @classmethod
    def _principal(cls, v: dict[str, Any]) -> dict[str, Any]:
        def check(d: Mapping[str, Any]) -> None:
            for name, cond in d.items():
                if name == "not":
                    if not isinstance(cond, Mapping):
                        raise ValueError("'not' takes a mapping of principal conditions")
                    check(cond)
                elif name not in PRINCIPAL_KINDS:
                    raise ValueError(f"unknown principal attribute {name!r}")

        check(v)
        return v


class OnlyIfAllowedWith(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    context: dict[str, Scalar]


class Expectation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at_most: Transform | None = None
    only_if_allowed_with: OnlyIfAllowedWith | None = None


class Requirement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    when: Scope = Field(default_factory=Scope)
    expect: Literal["deny"] | Expectation


class Invariant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")
    description: str = Field(min_length=1, max_length=500)
    when: Scope = Field(default_factory=Scope)
    expect: Literal["deny"] | Expectation | None = None
    require: list[Requirement] | None = None

    def requirements(self) -> list[Requirement]:
        """Each (scope, expectation) pair, the invariant's own scope joined to each."""
        if (self.expect is None) == (self.require is None):
            raise ValueError("give exactly one of expect or require")
        pairs = self.require or [Requirement(expect=self.expect)]
        return [Requirement(when=_join(self.when, r.when), expect=r.expect) for r in pairs]


def _join(a: Scope, b: Scope) -> Scope:
    actions = (
        a.action
        if b.action is None
        else b.action
        if a.action is None
        else [x for x in a.action if x in b.action]
    )
    return Scope(
        principal={**a.principal, **b.principal},
        action=actions,
        resource={**a.resource, **b.resource},
        context={**a.context, **b.context},
    )


class InvariantSet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    invariants: list[Invariant] = Field(min_length=1)


def parse_invariants(text: str, *, source: str = "invariants") -> InvariantSet:
    """Parse and validate an invariants file; errors name the file, invariant and field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=source) from None
    try:
        parsed = InvariantSet.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        where = ".".join(str(p) for p in loc) or None
        if len(loc) >= 2 and loc[0] == "invariants" and isinstance(loc[1], int):
            items = data.get("invariants") if isinstance(data, Mapping) else None
            if (
                isinstance(items, list)
                and loc[1] < len(items)
                and isinstance(items[loc[1]], Mapping)
            ):
                where = f"invariant {items[loc[1]].get('id', loc[1])!r}: " + ".".join(
                    str(p) for p in loc[2:]
                )
        raise InputError(first["msg"], file=source, field=where) from None
    seen: set[str] = set()
    for inv in parsed.invariants:
        if inv.id in seen:
            raise InputError("invariant id is used twice", file=source, field=inv.id)
        seen.add(inv.id)
        try:
            inv.requirements()
        except ValueError as exc:
            raise InputError(str(exc), file=source, field=f"invariant {inv.id!r}") from None
    return parsed


def invariants_for(settings_raw: Mapping[str, Any], home_path: Path) -> InvariantSet:
    """The invariants a home enforces: ``[policy] invariants = "<file>"`` (relative to the
    home) replaces the shipped ones; without it, the shipped ones."""
    section = settings_raw.get("policy", {})
    name = section.get("invariants") if isinstance(section, Mapping) else None
    if not name:
        return shipped_invariants()
    path = (home_path / str(name)).resolve()
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise InputError(f"invariants file unreadable ({exc.strerror})", file=str(path)) from None
    return parse_invariants(text, source=str(path))


def shipped_invariants_text() -> str:
    return resources.files(PACK_PACKAGE).joinpath(INVARIANTS_FILE).read_text("utf-8")


@functools.cache
def shipped_invariants() -> InvariantSet:
    return parse_invariants(shipped_invariants_text(), source=f"pack/{INVARIANTS_FILE}")


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Counterexample:
    """A concrete request that breaks an invariant, as a reviewer would replay it."""

    principal: dict[str, Value]
    action: str
    resource: dict[str, Value]
    context: dict[str, Value]
    policies: tuple[str, ...]
    compared_with: dict[str, Value] | None = None

    def to_json(self) -> dict[str, Any]:
        def plain(d: Mapping[str, Value]) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

        out: dict[str, Any] = {
            "principal": plain(self.principal),
            "action": self.action,
            "resource": plain(self.resource),
            "context": plain(self.context),
            "allowed_by": list(self.policies),
        }
        if self.compared_with is not None:
            out["denied_with"] = plain(self.compared_with)
        return out

    def summary(self) -> str:
        p = self.principal
        who = ", ".join(
            f"{k}={p[k]!r}"
            for k in (
                "role",
                "employer",
                "employer_country",
                "location_country",
                "clearance",
                "mfa",
                "covered_person",
            )
            if k in p
        )
        r = self.resource
        field = f"classification={r['classification']!r}, category={r['category']!r}"
        ctx = ", ".join(f"{k}={v!r}" for k, v in self.context.items() if v not in ("", 0, False))
        text = f"principal({who}) {self.action} field({field}) context({ctx or 'empty'})"
        return text + f" is allowed by {', '.join(self.policies) or 'the set'}"


@dataclass(frozen=True)
class InvariantResult:
    invariant: Invariant
    holds: bool
    counterexample: Counterexample | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.invariant.id,
            "description": self.invariant.description,
            "holds": self.holds,
            "counterexample": self.counterexample.to_json() if self.counterexample else None,
        }


@dataclass(frozen=True)
class CheckReport:
    policy_sha256: str
    results: tuple[InvariantResult, ...]
    seconds: float
    policies_checked: int
    table_rows: int

    @property
    def ok(self) -> bool:
        return all(r.holds for r in self.results)

    @property
    def broken(self) -> list[InvariantResult]:
        return [r for r in self.results if not r.holds]

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_sha256": self.policy_sha256,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "policies_checked": self.policies_checked,
            "cedar_evaluations": self.table_rows,
            "invariants": [r.to_json() for r in self.results],
        }


class InvariantViolated(PolicyRejected):
    """A policy set that breaks a declared invariant; carries the counterexamples."""

    def __init__(self, report: CheckReport, *, source: str = "policy") -> None:
        self.report = report
        super().__init__(
            [
                f"breaks invariant {r.invariant.id!r}: "
                + (r.counterexample.summary() if r.counterexample else "no counterexample")
                for r in report.broken
            ],
            source=source,
        )

    def detail_json(self) -> dict[str, Any]:
        return {"invariants": [r.to_json() for r in self.report.broken]}


# ---------------------------------------------------------------------- the check


def _scope_literals(invariants: InvariantSet, literals: Literals) -> None:
    """Values an invariant names must be representatives too (else it could not be met)."""

    def add(where: str, conds: Mapping[str, Any]) -> None:
        for name, cond in conds.items():
            if name == "not" and isinstance(cond, Mapping):
                add(where, cond)
                continue
            values: list[Any] = (
                cond if isinstance(cond, list) else [cond] if not isinstance(cond, Range) else []
            )
            if isinstance(cond, Range):
                values = [v for v in (cond.min, cond.max) if v is not None] + list(
                    cond.not_in or ()
                )
            if isinstance(cond, Mapping):
                values = [v for k, v in cond.items() if k in ("min", "max")] + list(
                    cond.get("not_in", ())
                )
            for v in values:
                literals.add((where, name), v)

    for inv in invariants.invariants:
        for req in inv.requirements():
            add("principal", req.when.principal)
            add("resource", req.when.resource)
            add("context", req.when.context)
            if isinstance(req.expect, Expectation) and req.expect.only_if_allowed_with:
                add("context", req.expect.only_if_allowed_with.context)


def _condition(search: Search, copy: Copy, var: VarName, cond: Any) -> Any:
    values = search.model.domain.values[var]
    if isinstance(cond, Mapping):
        cond = Range.model_validate(cond)
    if isinstance(cond, Range):
        ok = [
            v
            for v in values
            if (cond.min is None or (isinstance(v, int) and v >= cond.min))
            and (cond.max is None or (isinstance(v, int) and v <= cond.max))
            and (cond.not_in is None or v not in cond.not_in)
        ]
    elif isinstance(cond, list):
        ok = [v for v in values if v in cond]
    else:
        ok = [v for v in values if v == cond]
    return search.member(copy, var, ok)


def _principal_holds(search: Search, copy: Copy, conds: Mapping[str, Any]) -> Any:
    parts = []
    for name, cond in conds.items():
        if name == "not":
            parts.append(_principal_holds(search, copy, cond).negated())
        else:
            parts.append(_condition(search, copy, ("principal", name), cond))
    return search.all_of(parts)


def _constrain(search: Search, copy: Copy, scope: Scope) -> None:
    if scope.action is not None:
        search.cp.add(search.member(copy, ACTION, scope.action) == 1)
    if scope.principal:
        search.cp.add(_principal_holds(search, copy, scope.principal) == 1)
    for name, cond in scope.resource.items():
        search.cp.add(_condition(search, copy, ("resource", name), cond) == 1)
    for name, cond in scope.context.items():
        search.cp.add(_condition(search, copy, ("context", name), cond) == 1)


def _counterexample(
    model: PolicyModel,
    assignment: Mapping[VarName, Value],
    compared: Mapping[VarName, Value] | None,
) -> Counterexample:
    allowed, ids = decide(model.compiled, assignment, model.domain)
    if not allowed:
        # The search and Cedar disagree: never report (or accept) on a broken model.
        raise SymbolicError("internal error: a counterexample was not allowed when re-checked")
    if compared is not None and decide(model.compiled, compared, model.domain)[0]:
        raise SymbolicError("internal error: the compared request was allowed when re-checked")
    return Counterexample(
        principal={a: assignment[("principal", a)] for a in PRINCIPAL_KINDS},
        action=str(assignment[ACTION]),
        resource={a: assignment[("resource", a)] for a in FIELD_ATTRS},
        context={a: assignment[("context", a)] for a in CONTEXT_ATTRS},
        policies=ids,
        compared_with=(
            {a: compared[("context", a)] for a in CONTEXT_ATTRS} if compared is not None else None
        ),
    )


def _principal_attrs(conds: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for name, cond in conds.items():
        out |= _principal_attrs(cond) if name == "not" else {name}
    return out


def _check_requirement(model: PolicyModel, req: Requirement) -> Counterexample | None:
    search = Search(model, _principal_attrs(req.when.principal))
    copy = search.request()
    _constrain(search, copy, req.when)
    search.cp.add(copy.allowed == 1)
    other: Copy | None = None
    if isinstance(req.expect, Expectation):
        if req.expect.at_most is not None:
            search.cp.add(search.revealing_more_than(copy, req.expect.at_most) == 1)
        if req.expect.only_if_allowed_with is not None:
            fixed = {
                ("context", k): model.domain.index(("context", k), v)
                for k, v in req.expect.only_if_allowed_with.context.items()
            }
            other = search.request(fixed=fixed, share=copy)
            search.cp.add(other.allowed == 0)
    status, solver = search.solve(time_limit_s=SOLVER_TIME_LIMIT_S)
    if status == "none":
        return None
    if status == "unknown":
        raise SymbolicError(
            f"the search did not finish within {SOLVER_TIME_LIMIT_S:.0f} s (refused, fail closed)"
        )
    found = search.assignment(solver, copy)
    compared = search.assignment(solver, other) if other is not None else None
    return _counterexample(model, found, compared)


def check_invariants(
    compiled: CompiledPolicies,
    invariants: InvariantSet | None = None,
    *,
    principal_config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG,
) -> CheckReport:
    """Check every invariant over the whole request space; raise SymbolicError when the set
    cannot be checked (the caller refuses it)."""
    invariants = invariants or shipped_invariants()
    # The result depends on nothing else, so a set is checked once per process for the same
    # invariants and principal config (every `bastion init` installs the same pack).
    key = (compiled.sha256, invariants.model_dump_json(), principal_config)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    report = _check(compiled, invariants, principal_config)
    with _CACHE_LOCK:
        if len(_CACHE) >= 64:
            _CACHE.clear()
        _CACHE[key] = report
    return report


_CACHE: dict[tuple[str, str, PrincipalConfig], CheckReport] = {}
_CACHE_LOCK = threading.Lock()


def _check(
    compiled: CompiledPolicies, invariants: InvariantSet, config: PrincipalConfig
) -> CheckReport:
    started = time.perf_counter()
    ests, literals, reads = read_policies(compiled)
    _scope_literals(invariants, literals)
    for inv in invariants.invariants:
        for req in inv.requirements():
            if isinstance(req.expect, Expectation) and req.expect.only_if_allowed_with:
                for name in req.expect.only_if_allowed_with.context:
                    if name not in CONTEXT_ATTRS:
                        raise SymbolicError(
                            f"invariant {inv.id!r}: unknown context attribute {name!r}"
                        )
    model = build_model(compiled, literals, ests, reads, config, max_approvers=MAX_APPROVERS)
    results = []
    for inv in invariants.invariants:
        found = None
        for req in inv.requirements():
            found = _check_requirement(model, req)
            if found is not None:
                break
        results.append(InvariantResult(inv, found is None, found))
    return CheckReport(
        policy_sha256=compiled.sha256,
        results=tuple(results),
        seconds=time.perf_counter() - started,
        policies_checked=len(model.tables),
        table_rows=sum(len(t.rows) for t in model.tables),
    )


def enforce_invariants(
    compiled: CompiledPolicies,
    invariants: InvariantSet | None = None,
    *,
    principal_config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG,
    source: str = "policy",
) -> CheckReport:
    """Check, and refuse the set (InvariantViolated / PolicyRejected) unless every one holds."""
    try:
        report = check_invariants(compiled, invariants, principal_config=principal_config)
    except SymbolicError as exc:
        raise PolicyRejected(
            [f"cannot be checked against the invariants: {exc}"], source=source
        ) from None
    if not report.ok:
        raise InvariantViolated(report, source=source)
    return report


def invariants_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = [
    "UNKNOWN",
    "CheckReport",
    "Counterexample",
    "Invariant",
    "InvariantResult",
    "InvariantSet",
    "InvariantViolated",
    "check_invariants",
    "enforce_invariants",
    "parse_invariants",
    "shipped_invariants",
]
