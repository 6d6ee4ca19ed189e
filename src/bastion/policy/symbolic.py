"""A finite model of every field request a policy set can be asked, searched completely.

Zelkova checks IAM policies by translating them to logic. Here Cedar itself stays the only
evaluator, and the search is made finite and complete instead:

1. **Variables.** Every attribute a decision can depend on is a variable: the action, each
   attribute of the principal, the field and the request context. Its values are
   *representatives* of equivalence classes read off the policies: every literal a policy
   compares the attribute with, one value matching none of them, the neighbours of every
   number compared, and for enumerations one value no policy names (a class added later).
2. **One truth table per policy.** A policy reads few variables. Cedar evaluates it alone on
   every combination of the values of just those variables (batched), giving a table of
   (values -> matched, errored).
3. **Principals as Bastion derives them.** ``covered_person``, ``custodian``, ``mfa`` and
   ``clearance_level`` are not free: they are computed from token attributes by the same
   ``derive_attributes`` the gateway uses, over representative token attributes.
4. **A complete search.** The tables, the derivation and the question ("is there a request in
   this scope that is allowed?") become one constraint model solved by OR-Tools CP-SAT, which
   either proves there is none or returns one: a counterexample, re-checked with the whole
   policy set before it is reported.

A decision follows the engine: allowed when some permit matched, no forbid matched and no
policy errored (an error denies, fail closed).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cedarpy
from ortools.sat.python import cp_model

from bastion.policy.compiler import NAMESPACE, CompiledPolicies, cedar_id_order
from bastion.policy.principal import (
    CLEARANCE_LEVELS,
    PrincipalConfig,
    PrincipalSpec,
    derive_attributes,
)
from bastion.policy.vocabulary import RELEASE_ACTIONS, REVEAL_ORDER, Transform

# A variable is named by where it lives and the attribute: ("principal", "role"),
# ("resource", "classification"), ("context", "ticket"), or ("action", "").
VarName = tuple[str, str]
ACTION: VarName = ("action", "")
Scalar = str | int | bool
# The value of a set-valued attribute (amr) is a sorted tuple of strings.
Value = Scalar | tuple[str, ...]

UNKNOWN = "__unnamed__"
OTHER_TEXT = "__text__"
SHARED = "__shared__"
NON_US, COUNTRY_OF_CONCERN_REP = "DE", "CN"

# Policies that read context.now are checked at one instant (the domain has no time axis).
CHECK_INSTANT = {"__extn": {"fn": "datetime", "arg": "2026-01-01T00:00:00.000Z"}}

# The largest truth table one policy may need; beyond it the set is refused, not sampled.
MAX_TABLE_ROWS = 250_000

# Principal attributes as token attributes (what an issuer asserts) and as policy sees them.
_TOKEN_ATTRS = ("role", "employer", "employer_country", "location_country", "clearance", "amr")
_DERIVED = ("clearance_level", "mfa", "covered_person", "custodian")

# The Field and context attributes of the schema, with their kinds.
Kind = Literal["string", "long", "bool", "enum"]
FIELD_ATTRS: dict[str, Kind] = {
    "dataset": "string",
    "name": "string",
    "type": "string",
    "classification": "enum",
    "category": "enum",
    "pseudonymize": "bool",
}
CONTEXT_ATTRS: dict[str, Kind] = {
    "purpose": "string",
    "justification": "enum",
    "ticket": "string",
    "approvals": "long",
    "grant": "bool",
    "break_glass": "bool",
    "subject_count": "long",
}
PRINCIPAL_KINDS: dict[str, Kind] = {
    "role": "string",
    "employer": "string",
    "employer_country": "string",
    "location_country": "string",
    "clearance": "string",
    "clearance_level": "long",
    "amr": "string",
    "mfa": "bool",
    "covered_person": "bool",
    "custodian": "bool",
    "subject_id": "string",
}
ENUM_TYPES = {
    ("resource", "classification"): "Classification",
    ("resource", "category"): "Category",
    ("context", "justification"): "Justification",
}


class SymbolicError(ValueError):
    """The policy set cannot be checked exhaustively (the check then refuses it)."""


# ---------------------------------------------------------------------- reading the policies


@dataclass
class Literals:
    """Every literal each attribute is compared with, across policies and invariants."""

    values: dict[VarName, set[Value]] = field(default_factory=lambda: defaultdict(set))
    numbers: dict[VarName, set[int]] = field(default_factory=lambda: defaultdict(set))

    def add(self, var: VarName, value: object) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            self.numbers[var].add(value)
        elif isinstance(value, str):
            self.values[var].add(value)


def _attr_of(node: object) -> VarName | None:
    """``principal.role`` -> ("principal", "role"); anything else -> None."""
    if isinstance(node, Mapping) and "." in node:
        inner = node["."]
        base = inner.get("left")
        if isinstance(base, Mapping) and "Var" in base:
            return (str(base["Var"]), str(inner["attr"]))
    return None


def _literal(node: object) -> list[object] | None:
    """The literal values of ``node`` (a value, an entity, or a set of them), else None."""
    if not isinstance(node, Mapping):
        return None
    if "Value" in node:
        v = node["Value"]
        if isinstance(v, Mapping) and "__entity" in v:
            return [str(v["__entity"]["id"])]
        if isinstance(v, list):
            return [x for x in v if isinstance(x, str | int)]
        return [v]
    if "Set" in node:
        out: list[object] = []
        for item in node["Set"]:
            lit = _literal(item)
            if lit is None:
                return None
            out.extend(lit)
        return out
    return None


def _walk(node: object) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


_BINARY = ("==", "!=", "<", "<=", ">", ">=", "contains", "containsAll", "containsAny", "in")


def _identities(node: object, inside_attr: bool = False) -> Iterator[str]:
    """The variables (principal, resource) used as entities, not through an attribute."""
    if isinstance(node, Mapping):
        if "Var" in node and not inside_attr:
            yield str(node["Var"])
        for key, value in node.items():
            if key == "." and isinstance(value, Mapping):
                yield from _identities(value.get("left"), inside_attr=True)
            else:
                yield from _identities(value)
    elif isinstance(node, list):
        for v in node:
            yield from _identities(v)


def _collect(est: Mapping[str, Any], literals: Literals) -> set[VarName]:
    """The variables one policy reads, adding the literals it compares them with."""
    reads: set[VarName] = set()
    used_as_entity = set(_identities(est.get("conditions", [])))
    if "principal" in used_as_entity:
        raise SymbolicError(
            "a policy compares the principal entity itself; write the condition on principal "
            "attributes instead (identities are not enumerable)"
        )
    if "resource" in used_as_entity:
        reads.update({("resource", "dataset"), ("resource", "name")})
    for node in _walk(est.get("conditions", [])):
        if "__entity" in node and isinstance(node["__entity"], Mapping):
            entity = node["__entity"]
            if str(entity.get("type")) == f"{NAMESPACE}::Dataset":
                literals.add(("resource", "dataset"), str(entity["id"]))
            elif str(entity.get("type")) == f"{NAMESPACE}::Field":
                ds, _, name = str(entity["id"]).partition(".")
                literals.add(("resource", "dataset"), ds)
                literals.add(("resource", "name"), name)
        var = _attr_of(node)
        if var is not None:
            reads.add(var)
        for op in _BINARY:
            if op not in node or not isinstance(node[op], Mapping):
                continue
            left, right = node[op].get("left"), node[op].get("right")
            lv, rv = _attr_of(left), _attr_of(right)
            if lv and rv:  # two attributes compared: give both a value they can share
                literals.add(lv, SHARED)
                literals.add(rv, SHARED)
            for var, other in ((lv, right), (rv, left)):
                values = _literal(other) if var else None
                for v in values or ():
                    literals.add(var, v)  # type: ignore[arg-type]
        if "like" in node and isinstance(node["like"], Mapping):
            var = _attr_of(node["like"].get("left"))
            if var is not None:
                pattern = node["like"].get("pattern", [])
                text = "".join(
                    p["Literal"] if isinstance(p, Mapping) and "Literal" in p else "x"
                    for p in pattern
                )
                literals.add(var, text)
    if est.get("action", {}).get("op") != "All":
        reads.add(ACTION)
    if est.get("principal", {}).get("op") not in ("All", "is"):
        raise SymbolicError(
            "a policy names a particular principal in its scope; write the condition on "
            "principal attributes instead (identities are not enumerable)"
        )
    resource = est.get("resource", {})
    if resource.get("op") not in ("All", "is"):
        for entity in _walk(resource):
            if "type" in entity and "id" in entity:
                if str(entity["type"]) == f"{NAMESPACE}::Dataset":
                    literals.add(("resource", "dataset"), str(entity["id"]))
                elif str(entity["type"]) == f"{NAMESPACE}::Field":
                    ds, _, name = str(entity["id"]).partition(".")
                    literals.add(("resource", "dataset"), ds)
                    literals.add(("resource", "name"), name)
        reads.update({("resource", "dataset"), ("resource", "name")})
    return reads


def applies_to_fields(est: Mapping[str, Any]) -> bool:
    """Whether a policy can match a request on a Field (others never affect one)."""
    action = est.get("action", {})
    names: list[str] = []
    if action.get("op") == "==":
        names = [str(action["entity"]["id"])]
    elif action.get("op") == "in":
        names = [str(e["id"]) for e in action.get("entities", [])]
    if names and not set(names) & {a.value for a in RELEASE_ACTIONS}:
        return False
    resource = est.get("resource", {})
    if resource.get("op") == "is":
        return str(resource.get("entity_type")) == f"{NAMESPACE}::Field"
    return True


# ---------------------------------------------------------------------- the domain


def _string_reps(var: VarName, literals: Literals, base: Iterable[str] = ()) -> list[Value]:
    seen = sorted({*base, *(v for v in literals.values.get(var, ()) if isinstance(v, str))})
    return [*seen, UNKNOWN if var[1] != "purpose" and var[1] != "ticket" else OTHER_TEXT]


def _long_reps(var: VarName, literals: Literals, also: Iterable[int] = ()) -> list[Value]:
    """0, 1, every compared number and its neighbours, and one above them all."""
    points = {0, 1, *also}
    for n in literals.numbers.get(var, ()):
        points.update({n - 1, n, n + 1})
    points.add(max(points) + 1)
    return sorted(p for p in points if p >= 0)


@dataclass(frozen=True)
class Domain:
    """The representatives of every variable, and the principals Bastion can derive."""

    values: Mapping[VarName, tuple[Value, ...]]
    # Each realizable principal: its token attributes and what Bastion derived from them.
    principals: tuple[Mapping[str, Value], ...]

    def index(self, var: VarName, value: Value) -> int:
        return self.values[var].index(value)


def _enum_values(type_name: str) -> list[str]:
    from bastion.policy.compiler import schema_text

    text = schema_text()
    start = text.index(f"entity {type_name} enum [")
    body = text[start : text.index("]", start)]
    return [part.strip().strip('"') for part in body.split("[", 1)[1].split(",") if part.strip()]


def build_domain(literals: Literals, config: PrincipalConfig, *, max_approvers: int) -> Domain:
    values: dict[VarName, tuple[Value, ...]] = {
        ACTION: tuple(sorted(a.value for a in RELEASE_ACTIONS)),
    }
    for attr, kind in FIELD_ATTRS.items():
        var = ("resource", attr)
        if kind == "enum":
            values[var] = (*_enum_values(ENUM_TYPES[var]), UNKNOWN)
        elif kind == "bool":
            values[var] = (False, True)
        else:
            values[var] = tuple(_string_reps(var, literals))
    for attr, kind in CONTEXT_ATTRS.items():
        var = ("context", attr)
        if kind == "enum":
            values[var] = tuple(_enum_values(ENUM_TYPES[var]))
        elif kind == "bool":
            values[var] = (False, True)
        elif kind == "long":
            values[var] = tuple(_long_reps(var, literals, (max_approvers,)))
        else:
            values[var] = tuple(_string_reps(var, literals, base=("",)))

    principals = _principals(literals, config)
    for attr in PRINCIPAL_KINDS:
        seen = sorted({p[attr] for p in principals}, key=repr)
        values[("principal", attr)] = tuple(seen)
    return Domain(values=values, principals=principals)


def _countries(var: VarName, literals: Literals, config: PrincipalConfig) -> list[str]:
    named = {str(v) for v in literals.values.get(var, ()) if isinstance(v, str)}
    concern = sorted(config.countries_of_concern - named)
    reps = {"", "US", *named}
    if concern:
        reps.add(COUNTRY_OF_CONCERN_REP if COUNTRY_OF_CONCERN_REP in concern else concern[0])
    reps.add(next(c for c in (NON_US, "FR", "JP", "BR") if c not in named))
    return sorted(reps)


def _principals(literals: Literals, config: PrincipalConfig) -> tuple[Mapping[str, Value], ...]:
    """Every distinct principal Bastion can derive from representative token attributes."""
    roles = _string_reps(("principal", "role"), literals)
    employers = _string_reps(
        ("principal", "employer"),
        literals,
        base=(*config.custodian_employers, *config.covered_employers, ""),
    )
    clearances = sorted({*CLEARANCE_LEVELS, *map(str, literals.values[("principal", "clearance")])})
    amr_named = sorted(str(v) for v in literals.values.get(("principal", "amr"), ()))
    amrs: list[tuple[str, ...]] = [("pwd",), ("mfa", "pwd")] + [
        tuple(sorted({"pwd", a})) for a in amr_named
    ]
    subjects = sorted({"", SHARED, *map(str, literals.values[("principal", "subject_id")])})
    out: dict[tuple[Value, ...], Mapping[str, Value]] = {}
    for role, employer, ec, lc, clearance, amr, subject in itertools.product(
        roles,
        employers,
        _countries(("principal", "employer_country"), literals, config),
        _countries(("principal", "location_country"), literals, config),
        clearances,
        amrs,
        subjects,
    ):
        spec = _Token(str(role), str(employer), ec, lc, clearance, amr, subject)
        attrs = derive_attributes(spec, config).cedar_attrs()
        row: dict[str, Value] = {k: _freeze(attrs[k]) for k in PRINCIPAL_KINDS}
        out.setdefault(tuple(row[k] for k in PRINCIPAL_KINDS), row)
    return tuple(out.values())


def _freeze(value: object) -> Value:
    if isinstance(value, list):
        return tuple(sorted(str(v) for v in value))
    assert isinstance(value, str | int | bool)
    return value


@dataclass(frozen=True)
class _Token:
    """Token attributes as an issuer asserts them (a PrincipalLike for derive_attributes)."""

    role: str
    employer: str | None
    employer_country: str | None
    location_country: str | None
    clearance: str
    amr: tuple[str, ...]
    subject_id: str
    id: str = "probe"


# ---------------------------------------------------------------------- truth tables


@dataclass(frozen=True)
class PolicyTable:
    """One policy evaluated alone on every combination of the variables it reads."""

    cedar_id: str
    id: str
    effect: Literal["permit", "forbid"]
    transform: Transform | None
    reads: tuple[VarName, ...]
    # (value indices in ``reads`` order) -> (matched, errored)
    rows: Mapping[tuple[int, ...], tuple[bool, bool]]


def _entity(type_: str, id_: str) -> dict[str, Any]:
    return {"__entity": {"type": f"{NAMESPACE}::{type_}", "id": id_}}


def cedar_value(var: VarName, value: Value) -> Any:
    if var in ENUM_TYPES:
        return _entity(ENUM_TYPES[var], str(value))
    if isinstance(value, tuple):
        return list(value)
    return value


def concrete_request(
    assignment: Mapping[VarName, Value], domain: Domain, tag: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Cedar request (and its entities) for one full assignment of the variables."""
    p_attrs = {
        a: cedar_value(("principal", a), assignment[("principal", a)]) for a in PRINCIPAL_KINDS
    }
    r_attrs = {a: cedar_value(("resource", a), assignment[("resource", a)]) for a in FIELD_ATTRS}
    dataset = str(assignment[("resource", "dataset")])
    field_id = f"{dataset}.{assignment[('resource', 'name')]}"
    principal_uid = {"type": f"{NAMESPACE}::Principal", "id": f"probe-{tag}"}
    field_uid = {"type": f"{NAMESPACE}::Field", "id": field_id}
    dataset_uid = {"type": f"{NAMESPACE}::Dataset", "id": dataset}
    entities: list[dict[str, Any]] = [
        {"uid": principal_uid, "attrs": p_attrs, "parents": []},
        {"uid": field_uid, "attrs": r_attrs, "parents": [dataset_uid]},
        {"uid": dataset_uid, "attrs": {"name": dataset}, "parents": []},
    ]
    context = {a: cedar_value(("context", a), assignment[("context", a)]) for a in CONTEXT_ATTRS}
    context["now"] = CHECK_INSTANT
    request = {
        "principal": principal_uid,
        "action": {"type": f"{NAMESPACE}::Action", "id": str(assignment[ACTION])},
        "resource": field_uid,
        "context": context,
    }
    return request, entities


def policy_table(
    cedar_id: str,
    est: Mapping[str, Any],
    info_id: str,
    transform: Transform | None,
    reads: set[VarName],
    domain: Domain,
) -> PolicyTable:
    """Evaluate one policy alone on every combination of the variables it reads."""
    order = tuple(sorted(v for v in reads if v in domain.values))
    sizes = [len(domain.values[v]) for v in order]
    total = 1
    for n in sizes:
        total *= n
    if total > MAX_TABLE_ROWS:
        raise SymbolicError(
            f"policy {info_id!r} reads {len(order)} attributes ({total} combinations, more "
            f"than {MAX_TABLE_ROWS}); split it so it can be checked exhaustively"
        )
    key = (json.dumps(est, sort_keys=True), tuple((v, domain.values[v]) for v in order))
    cached = _TABLES.get(key)
    if cached is None:
        cached = _evaluate(est, cedar_id, order, domain)
        if len(_TABLES) > 512:
            _TABLES.clear()
        _TABLES[key] = cached
    effect = est["effect"]
    assert effect in ("permit", "forbid")
    return PolicyTable(cedar_id, info_id, effect, transform, order, cached)


# Truth tables by (policy, domain of what it reads): a set that changes one policy re-evaluates
# only that one.
_TABLES: dict[tuple[str, tuple[Any, ...]], dict[tuple[int, ...], tuple[bool, bool]]] = {}


def _evaluate(
    est: Mapping[str, Any], cedar_id: str, order: tuple[VarName, ...], domain: Domain
) -> dict[tuple[int, ...], tuple[bool, bool]]:
    text = cedarpy.policies_from_json_str(
        json.dumps({"staticPolicies": {cedar_id: est}, "templates": {}, "templateLinks": []})
    )
    alone = cedarpy.PolicySet.from_str(text)
    base = {v: vals[0] for v, vals in domain.values.items()}
    # Entities are built once per combination of the principal's (or the field's) values.
    # A field's uid is "dataset.name"; when the policy never reads it, each combination of
    # the field's attributes gets its own uid so that one batch holds them all; when it does,
    # the k-th attribute set seen for one uid goes to batch k.
    name_read = ("resource", "name") in order
    where = [v[0] for v in order]
    principals: dict[tuple[int, ...], dict[str, Any]] = {}
    fields: dict[tuple[int, ...], tuple[dict[str, Any], int]] = {}
    datasets: dict[str, dict[str, Any]] = {}
    variants: dict[str, int] = defaultdict(int)
    batches: dict[int, list[tuple[tuple[int, ...], dict[str, Any]]]] = defaultdict(list)
    contexts: dict[tuple[int, ...], tuple[dict[str, Any], dict[str, str]]] = {}
    for combo in itertools.product(*(range(n) for n in (len(domain.values[v]) for v in order))):
        values = dict(base)
        values.update({v: domain.values[v][i] for v, i in zip(order, combo, strict=True)})
        pkey = tuple(i for i, w in zip(combo, where, strict=True) if w == "principal")
        ckey = tuple(i for i, w in zip(combo, where, strict=True) if w in ("context", "action"))
        if pkey not in principals:
            principals[pkey] = {
                "uid": {"type": f"{NAMESPACE}::Principal", "id": f"p{len(principals)}"},
                "attrs": {
                    a: cedar_value(("principal", a), values[("principal", a)])
                    for a in PRINCIPAL_KINDS
                },
                "parents": [],
            }
        rkey = tuple(i for i, w in zip(combo, where, strict=True) if w == "resource")
        if rkey not in fields:
            dataset = str(values[("resource", "dataset")])
            name = str(values[("resource", "name")]) if name_read else f"f{len(fields)}"
            uid = {"type": f"{NAMESPACE}::Field", "id": f"{dataset}.{name}"}
            variant = variants[uid["id"]]
            variants[uid["id"]] += 1
            datasets.setdefault(
                dataset,
                {
                    "uid": {"type": f"{NAMESPACE}::Dataset", "id": dataset},
                    "attrs": {"name": dataset},
                    "parents": [],
                },
            )
            attrs = {a: cedar_value(("resource", a), values[("resource", a)]) for a in FIELD_ATTRS}
            fields[rkey] = (
                {"uid": uid, "attrs": attrs, "parents": [datasets[dataset]["uid"]]},
                variant,
            )
        field_entity, variant = fields[rkey]
        if ckey not in contexts:
            # Shared by every combination with the same context and action (read-only).
            context = {
                a: cedar_value(("context", a), values[("context", a)]) for a in CONTEXT_ATTRS
            }
            context["now"] = CHECK_INSTANT
            contexts[ckey] = (context, {"type": f"{NAMESPACE}::Action", "id": str(values[ACTION])})
        context, action = contexts[ckey]
        request = {
            "principal": principals[pkey]["uid"],
            "action": action,
            "resource": field_entity["uid"],
            "context": context,
        }
        batches[variant].append((combo, request))
    rows: dict[tuple[int, ...], tuple[bool, bool]] = {}
    shared = [*principals.values(), *datasets.values()]
    for variant, items in sorted(batches.items()):
        own = [f for f, v in fields.values() if v == variant]
        entities = cedarpy.Entities.from_json_str(json.dumps([*shared, *own]))
        results = cedarpy.is_authorized_batch([r for _, r in items], alone, entities)
        for (combo, _), res in zip(items, results, strict=True):
            errored = bool(res.diagnostics.errors)
            rows[combo] = (not errored and bool(res.diagnostics.reasons), errored)
    return rows


# ---------------------------------------------------------------------- the model


@dataclass(frozen=True)
class PolicyModel:
    """The tables of a policy set over its domain: everything the search needs."""

    compiled: CompiledPolicies
    domain: Domain
    tables: tuple[PolicyTable, ...]
    # Derived once per model and shared by every search over it.
    _derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def principal_rows(self, keys: tuple[str, ...]) -> list[list[int]]:
        """The realizable principals projected onto ``keys``, as value indices."""
        cache_key = ("principals", keys)
        if cache_key not in self._derived:
            index = {
                a: {v: i for i, v in enumerate(self.domain.values[("principal", a)])} for a in keys
            }
            rows = sorted({tuple(index[a][p[a]] for a in keys) for p in self.domain.principals})
            self._derived[cache_key] = [list(r) for r in rows]
        rows_out: list[list[int]] = self._derived[cache_key]
        return rows_out

    def table_rows(self, table: PolicyTable) -> list[list[int]]:
        """A truth table as CP-SAT allowed assignments: the values, then matched, errored."""
        cache_key = ("table", table.cedar_id)
        if cache_key not in self._derived:
            self._derived[cache_key] = [
                [*combo, int(hit), int(err)] for combo, (hit, err) in table.rows.items()
            ]
        rows_out: list[list[int]] = self._derived[cache_key]
        return rows_out


def read_policies(
    compiled: CompiledPolicies,
) -> tuple[dict[str, Mapping[str, Any]], Literals, dict[str, set[VarName]]]:
    tree = json.loads(cedarpy.policies_to_json_str(compiled.text))
    ests: dict[str, Mapping[str, Any]] = tree["staticPolicies"]
    literals = Literals()
    reads: dict[str, set[VarName]] = {}
    for cedar_id in sorted(ests, key=cedar_id_order):
        if applies_to_fields(ests[cedar_id]):
            reads[cedar_id] = _collect(ests[cedar_id], literals)
    return ests, literals, reads


def build_model(
    compiled: CompiledPolicies,
    literals: Literals,
    ests: Mapping[str, Mapping[str, Any]],
    reads: Mapping[str, set[VarName]],
    config: PrincipalConfig,
    *,
    max_approvers: int,
) -> PolicyModel:
    domain = build_domain(literals, config, max_approvers=max_approvers)
    tables = []
    for cedar_id, var_set in reads.items():
        info = compiled.by_cedar_id[cedar_id]
        tables.append(
            policy_table(cedar_id, ests[cedar_id], info.id, info.transform, var_set, domain)
        )
    return PolicyModel(compiled=compiled, domain=domain, tables=tuple(tables))


# ---------------------------------------------------------------------- the search


@dataclass
class Copy:
    """One evaluation of the policy set inside the constraint model (a request's decision)."""

    vars: dict[VarName, cp_model.IntVar]
    allowed: cp_model.IntVar
    matched: dict[str, cp_model.IntVar]
    errored: dict[str, cp_model.IntVar]


class Search:
    """A CP-SAT model over one policy model, with as many request copies as a question needs."""

    def __init__(self, model: PolicyModel, principal_attrs: Iterable[str] = ()) -> None:
        self.model = model
        self.cp = cp_model.CpModel()
        self._n = 0
        # Only the principal attributes some policy (or the question) reads are constrained;
        # the realizable principals are projected onto them, which keeps the table small.
        read = {v[1] for t in model.tables for v in t.reads if v[0] == "principal"}
        self.principal_keys = sorted(read | set(principal_attrs))

    def request(
        self, fixed: Mapping[VarName, int] | None = None, share: Copy | None = None
    ) -> Copy:
        """A request's variables and decision; ``share`` makes them equal to another copy's
        except the variables ``fixed`` sets (the same request with some values changed)."""
        self._n += 1
        domain = self.model.domain
        variables: dict[VarName, cp_model.IntVar] = {}
        for var, values in domain.values.items():
            if share is not None and (fixed is None or var not in fixed):
                variables[var] = share.vars[var]
            else:
                variables[var] = self.cp.new_int_var(
                    0, len(values) - 1, f"{var[0]}.{var[1]}#{self._n}"
                )
                if fixed is not None and var in fixed:
                    self.cp.add(variables[var] == fixed[var])
        if self.principal_keys and (
            share is None or (fixed and any(v[0] == "principal" for v in fixed))
        ):
            self.cp.add_allowed_assignments(
                [variables[("principal", a)] for a in self.principal_keys],
                self.model.principal_rows(tuple(self.principal_keys)),
            )
        matched: dict[str, cp_model.IntVar] = {}
        errored: dict[str, cp_model.IntVar] = {}
        for table in self.model.tables:
            if share is not None and not (fixed and set(table.reads) & set(fixed)):
                matched[table.cedar_id] = share.matched[table.cedar_id]
                errored[table.cedar_id] = share.errored[table.cedar_id]
                continue
            m = self.cp.new_bool_var(f"m:{table.id}#{self._n}")
            e = self.cp.new_bool_var(f"e:{table.id}#{self._n}")
            self.cp.add_allowed_assignments(
                [variables[v] for v in table.reads] + [m, e],
                self.model.table_rows(table),
            )
            matched[table.cedar_id], errored[table.cedar_id] = m, e
        allowed = self.cp.new_bool_var(f"allowed#{self._n}")
        permits = [matched[t.cedar_id] for t in self.model.tables if t.effect == "permit"]
        blockers = [matched[t.cedar_id] for t in self.model.tables if t.effect == "forbid"] + [
            errored[t.cedar_id] for t in self.model.tables
        ]
        any_permit = self._any(permits)
        any_block = self._any(blockers)
        self.cp.add_bool_and([any_permit, any_block.negated()]).only_enforce_if(allowed)
        self.cp.add_bool_or([any_permit.negated(), any_block]).only_enforce_if(allowed.negated())
        return Copy(variables, allowed, matched, errored)

    def _any(self, items: Sequence[cp_model.IntVar]) -> cp_model.IntVar:
        return self._fold(items, empty=0, any_of=True)

    def _fold(
        self, items: Sequence[cp_model.IntVar], *, empty: int, any_of: bool
    ) -> cp_model.IntVar:
        """A boolean equal to the OR (``any_of``) or the AND of ``items``; ``empty`` if none."""
        out = self.cp.new_bool_var("")
        if not items:
            self.cp.add(out == empty)
        elif any_of:
            self.cp.add_max_equality(out, list(items))
        else:
            self.cp.add_min_equality(out, list(items))
        return out

    def member(self, copy: Copy, var: VarName, allowed_values: Iterable[Value]) -> cp_model.IntVar:
        """A boolean that is true exactly when ``var`` takes one of ``allowed_values``."""
        values = self.model.domain.values[var]
        wanted = set(allowed_values)
        b = self.cp.new_bool_var("")
        self.cp.add_allowed_assignments(
            [copy.vars[var], b], [[i, int(v in wanted)] for i, v in enumerate(values)]
        )
        return b

    def all_of(self, items: Sequence[cp_model.IntVar]) -> cp_model.IntVar:
        return self._fold(items, empty=1, any_of=False)

    def revealing_more_than(self, copy: Copy, limit: Transform) -> cp_model.IntVar:
        """True when no matched permit caps the field at ``limit`` or less (the least revealing
        transform of the matched permits wins, as in the engine)."""
        capping = [
            copy.matched[t.cedar_id]
            for t in self.model.tables
            if t.effect == "permit"
            and t.transform is not None
            and REVEAL_ORDER[t.transform] <= REVEAL_ORDER[limit]
        ]
        out = self.cp.new_bool_var("")
        self.cp.add(out + self._any(capping) == 1)
        return out

    def solve(self, *, time_limit_s: float) -> tuple[str, cp_model.CpSolver]:
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.max_time_in_seconds = time_limit_s
        status = solver.solve(self.cp)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return "found", solver
        if status == cp_model.INFEASIBLE:
            return "none", solver
        return "unknown", solver

    def assignment(self, solver: cp_model.CpSolver, copy: Copy) -> dict[VarName, Value]:
        """The request the solver found, with a realizable principal that agrees with it on
        every attribute the search constrained."""
        out = {
            var: self.model.domain.values[var][solver.value(iv)] for var, iv in copy.vars.items()
        }
        for p in self.model.domain.principals:
            if all(p[a] == out[("principal", a)] for a in self.principal_keys):
                out.update({("principal", a): p[a] for a in PRINCIPAL_KINDS})
                break
        return out


def decide(
    compiled: CompiledPolicies, assignment: Mapping[VarName, Value], domain: Domain
) -> tuple[bool, tuple[str, ...]]:
    """The whole policy set's decision on one concrete request (re-checks a counterexample)."""
    request, entities = concrete_request(assignment, domain, "counterexample")
    res = cedarpy.is_authorized(
        request, compiled.policy_set, cedarpy.Entities.from_json_str(json.dumps(entities))
    )
    ids = tuple(
        compiled.by_cedar_id[r].id
        for r in sorted(res.diagnostics.reasons, key=cedar_id_order)
        if r in compiled.by_cedar_id
    )
    return res.allowed and not res.diagnostics.errors, ids


__all__ = [
    "ACTION",
    "Domain",
    "Literals",
    "PolicyModel",
    "PrincipalSpec",
    "Search",
    "SymbolicError",
    "VarName",
    "build_model",
    "decide",
    "read_policies",
]
