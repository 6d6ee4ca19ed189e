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
import re
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
from bastion.policy.principal import CLEARANCE_LEVELS, DEFAULT_PRINCIPAL_CONFIG, PrincipalConfig
from bastion.policy.symbolic import (
    ACTION,
    CONTEXT_ATTRS,
    FIELD_ATTRS,
    NOW,
    PRINCIPAL_KINDS,
    UNKNOWN,
    Copy,
    Kind,
    Literals,
    PolicyModel,
    Search,
    SymbolicError,
    Value,
    VarName,
    build_model,
    decide,
    enum_members,
    read_policies,
)
from bastion.policy.vocabulary import FIELD_RESOURCE_ACTIONS, MAX_APPROVERS, Transform
from bastion.settings import Settings

INVARIANTS_FILE = "invariants.yaml"
SOLVER_TIME_LIMIT_S = 60.0

Scalar = str | int | bool


class Range(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int | None = None
    max: int | None = None
    not_in: tuple[Scalar, ...] | None = None


Condition = Scalar | list[Scalar] | Range


_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _check_values(var: VarName, cond: Any) -> None:
    """Refuse a condition no request can meet because of its type or spelling (a misspelt
    category, a string for a number, a lower-case country): it would hold vacuously."""
    where, name = var
    kind = _KINDS[where][name]
    if name == "amr":
        raise ValueError("amr cannot be named in an invariant; use mfa (derived from it)")
    if isinstance(cond, Mapping):
        cond = Range.model_validate(cond)
    if isinstance(cond, Range):
        if (cond.min is not None or cond.max is not None) and kind != "long":
            raise ValueError(f"{name}: min and max apply to numbers only")
        items: list[Any] = list(cond.not_in or ())
    elif isinstance(cond, list):
        if not cond:
            raise ValueError(f"{name}: an empty list matches nothing")
        items = cond
    else:
        items = [cond]
    for v in items:
        if kind == "long":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif kind == "bool":
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ValueError(f"{name}: {v!r} is not a {'string' if kind == 'enum' else kind}")
        if kind == "enum" and v not in enum_members(var):
            raise ValueError(f"{name}: unknown value {v!r} (known: {', '.join(enum_members(var))})")
        if name == "clearance" and v not in CLEARANCE_LEVELS:
            raise ValueError(f"clearance: unknown value {v!r}")
        if name.endswith("_country") and v != "" and not _COUNTRY.match(str(v)):
            raise ValueError(f"{name}: {v!r} is not an upper-case ISO 3166-1 alpha-2 code")


_KINDS: dict[str, Mapping[str, Kind]] = {
    "principal": PRINCIPAL_KINDS,
    "resource": FIELD_ATTRS,
    "context": CONTEXT_ATTRS,
}


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
        known = {a.value for a in FIELD_RESOURCE_ACTIONS}
        if v is not None and not v:
            raise ValueError("an empty list of actions matches nothing")
        for name in v or ():
            if name not in known:
                raise ValueError(
                    f"unknown field action {name!r} (known: {', '.join(sorted(known))})"
                )
        return v

    @field_validator("resource", "context")
    @classmethod
    def _attributes(cls, v: dict[str, Condition], info: ValidationInfo) -> dict[str, Condition]:
        where = "resource" if info.field_name == "resource" else "context"
        what = "field" if where == "resource" else "context"
        for name, cond in v.items():
            if name not in _KINDS[where]:
                raise ValueError(f"unknown {what} attribute {name!r}")
            _check_values((where, name), cond)
        return v

    @field_validator("principal")
    @classmethod
    def _principal(cls, v: dict[str, Any]) -> dict[str, Any]:
        def check(d: Mapping[str, Any]) -> None:
            for name, cond in d.items():
                if name == "not":
                    if not isinstance(cond, Mapping) or not cond:
                        raise ValueError("'not' takes a non-empty mapping of principal conditions")
                    check(cond)
                elif name not in PRINCIPAL_KINDS:
                    raise ValueError(f"unknown principal attribute {name!r}")
                else:
                    _check_values(("principal", name), cond)

        check(v)
        return v


class OnlyIfAllowedWith(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    context: dict[str, Scalar] = Field(min_length=1)

    @field_validator("context")
    @classmethod
    def _values(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        for name, value in v.items():
            if name not in CONTEXT_ATTRS:
                raise ValueError(f"unknown context attribute {name!r}")
            _check_values(("context", name), value)
        return v


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

    def checks(self) -> list[Check]:
        """Each expectation with the scopes it is under: the invariant's own and the
        requirement's, which must both hold (a condition in one never replaces one in the
        other)."""
        if (self.expect is None) == (self.require is None):
            raise ValueError("give exactly one of expect or require")
        if self.require is None:
            assert self.expect is not None
            return [Check((self.when,), self.expect)]
        return [Check((self.when, r.when), r.expect) for r in self.require]


@dataclass(frozen=True)
class Check:
    """One expectation of an invariant and the scopes (all of them) it is under."""

    scopes: tuple[Scope, ...]
    expect: Literal["deny"] | Expectation


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
        errors = exc.errors()
        # Of an expectation's alternatives, report the mapping's error, not that the text
        # is not "deny".
        first = next((e for e in errors if "literal['deny']" not in e["loc"]), errors[0])
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
            inv.checks()
        except ValueError as exc:
            raise InputError(str(exc), file=source, field=f"invariant {inv.id!r}") from None
    return parsed


def invariants_for(settings: Settings, home_path: Path) -> InvariantSet:
    """The invariants a home enforces: ``[policy] invariants = "<file>"`` (relative to the
    home) replaces the shipped ones; without it, the shipped ones."""
    name = settings.policy.invariants
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
        for check in inv.checks():
            for scope in check.scopes:
                add("principal", scope.principal)
                add("resource", scope.resource)
                add("context", scope.context)
            if isinstance(check.expect, Expectation) and check.expect.only_if_allowed_with:
                add("context", check.expect.only_if_allowed_with.context)


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
        context=_context_of(assignment),
        policies=ids,
        compared_with=_context_of(compared) if compared is not None else None,
    )


def _context_of(assignment: Mapping[VarName, Value]) -> dict[str, Value]:
    """The context attributes of a request, with the instant when a policy reads it."""
    out = {a: assignment[("context", a)] for a in CONTEXT_ATTRS}
    if NOW in assignment:
        out["now"] = assignment[NOW]
    return out


def _principal_attrs(conds: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for name, cond in conds.items():
        out |= _principal_attrs(cond) if name == "not" else {name}
    return out


def _check_requirement(model: PolicyModel, check: Check) -> Counterexample | None:
    attrs: set[str] = set()
    for scope in check.scopes:
        attrs |= _principal_attrs(scope.principal)
    search = Search(model, attrs)
    copy = search.request()
    for scope in check.scopes:
        _constrain(search, copy, scope)
    search.cp.add(copy.allowed == 1)
    other: Copy | None = None
    expect = check.expect
    if isinstance(expect, Expectation):
        if expect.at_most is not None:
            search.cp.add(search.revealing_more_than(copy, expect.at_most) == 1)
        if expect.only_if_allowed_with is not None:
            fixed = {
                ("context", k): model.domain.index(("context", k), v)
                for k, v in expect.only_if_allowed_with.context.items()
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
    model = build_model(compiled, literals, ests, reads, config, max_approvers=MAX_APPROVERS)
    results = []
    for inv in invariants.invariants:
        found = None
        for check in inv.checks():
            found = _check_requirement(model, check)
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
