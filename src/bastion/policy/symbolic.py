"""A finite model of every field request a policy set can be asked, searched completely.

Zelkova checks IAM policies by translating them to logic. Here Cedar itself stays the only
evaluator, and the search is made finite and complete instead:

1. **Variables.** Every attribute a decision can depend on is a variable: the action, each
   attribute of the principal, the field and the request context (``context.now`` too, when
   a policy compares it with a datetime). Its values are *representatives* of equivalence
   classes read off the policies: every literal a policy compares the attribute with, one
   value matching none of them, the neighbours of every number and instant compared, a
   string for every combination of ``like`` patterns some string matches, every subset of
   the amr methods named (the empty set too), and for enumerations one value no policy
   names (a class added later). Attributes compared with each other share their literals,
   and get enough values to be equal, or all distinct, in every gap between them.
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

What these classes cannot capture is refused (``SymbolicError``), never approximated: a
named principal, an attribute of an entity literal (the catalog is not in the model),
arithmetic on an attribute, the whole context as a value, ``context.now`` used other than
compared with a datetime literal, an expression form the reader does not know, and domains
or tables too large to enumerate.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import cedarpy
from ortools.sat.python import cp_model

from bastion.policy.compiler import NAMESPACE, CompiledPolicies, cedar_id_order, schema_text
from bastion.policy.principal import (
    _STRONG_AMR,
    CLEARANCE_LEVELS,
    PrincipalConfig,
    PrincipalSpec,
    derive_attributes,
)
from bastion.policy.vocabulary import FIELD_RESOURCE_ACTIONS, REVEAL_ORDER, Transform

# A variable is named by where it lives and the attribute: ("principal", "role"),
# ("resource", "classification"), ("context", "ticket"), or ("action", "").
VarName = tuple[str, str]
ACTION: VarName = ("action", "")
Scalar = str | int | bool
# The value of a set-valued attribute (amr) is a sorted tuple of strings.
Value = Scalar | tuple[str, ...]

UNKNOWN = "__unnamed__"
OTHER_TEXT = "__text__"
SHARED = "__SHARED__"
NON_US, COUNTRY_OF_CONCERN_REP = "DE", "CN"

# context.now when no policy compares it with anything (then it is not a variable); when one
# does, it is a variable whose values are this instant and each side of every literal.
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
    "service": "string",
}
ENUM_TYPES = {
    ("resource", "classification"): "Classification",
    ("resource", "category"): "Category",
    ("context", "justification"): "Justification",
}


class SymbolicError(ValueError):
    """The policy set cannot be checked exhaustively (the check then refuses it)."""


# ---------------------------------------------------------------------- reading the policies


# A ``like`` pattern: its characters, None standing for the wildcard.
Pattern = tuple[str | None, ...]


@dataclass
class Literals:
    """What the policies (and invariants) say about each attribute: the literals it is
    compared with, the ``like`` patterns it is matched against, the attributes it is compared
    with, and the instants ``context.now`` is compared with."""

    values: dict[VarName, set[Value]] = field(default_factory=lambda: defaultdict(set))
    numbers: dict[VarName, set[int]] = field(default_factory=lambda: defaultdict(set))
    patterns: dict[VarName, set[Pattern]] = field(default_factory=lambda: defaultdict(set))
    # Groups of attributes that meet in one comparison: they share their representatives.
    links: list[frozenset[VarName]] = field(default_factory=list)
    # Milliseconds since the epoch of every datetime literal context.now is compared with.
    instants: set[int] = field(default_factory=set)
    # Every attribute some policy reads.
    read: set[VarName] = field(default_factory=set)

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


def _walk(node: object) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# Operators whose operands are compared: the attributes in them share representatives and get
# every literal in them as one.
_RELATIONS = (
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "contains",
    "containsAll",
    "containsAny",
    "in",
    "like",
    "is",
)
_ORDER = ("==", "!=", "<", "<=", ">", ">=")
_ARITHMETIC = ("+", "-", "*", "neg")
NOW: VarName = ("context", "now")


def _attrs_in(node: object) -> set[VarName]:
    return {v for n in _walk(node) if (v := _attr_of(n)) is not None}


def _values_in(node: object) -> Iterator[object]:
    """Every literal value in an expression (entity literals by their id)."""
    for n in _walk(node):
        if "Value" not in n:
            continue
        v = n["Value"]
        items = v if isinstance(v, list) else [v]
        for item in items:
            if isinstance(item, Mapping) and "__entity" in item:
                yield str(item["__entity"]["id"])
            elif isinstance(item, str | int):
                yield item


def _datetime_literal(node: object) -> str | None:
    """The text of ``datetime("...")`` when ``node`` is exactly that, else None."""
    if isinstance(node, Mapping) and isinstance(node.get("datetime"), list):
        args = node["datetime"]
        if (
            len(args) == 1
            and isinstance(args[0], Mapping)
            and isinstance(args[0].get("Value"), str)
        ):
            return str(args[0]["Value"])
    return None


_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?(Z|[+-]\d{4}))?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant_ms(text: str) -> int:
    """A Cedar datetime literal as milliseconds since the epoch."""
    m = _DATETIME.match(text)
    if m is None:
        raise SymbolicError(f"datetime {text!r} is not in a form the check can order")
    y, mo, d, h, mi, s, ms, tz = m.groups()
    try:
        when = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), 0, UTC)
    except ValueError:
        raise SymbolicError(f"datetime {text!r} is not a valid instant") from None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        when -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5]))
    return (when - _EPOCH) // timedelta(milliseconds=1) + int(ms or 0)


def instant_text(ms: int) -> str:
    """Milliseconds since the epoch as a Cedar datetime literal (UTC, millisecond precision)."""
    try:
        when = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise SymbolicError("an instant next to a datetime literal is out of range") from None
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{ms % 1000:03d}Z"
    )


def _add_entity_literals(node: object, literals: Literals) -> None:
    """A Field or Dataset named in a scope is a representative of the field's dataset and
    name."""
    for n in _walk(node):
        entity = n.get("__entity") if "__entity" in n else n if "type" in n and "id" in n else None
        if isinstance(entity, Mapping):
            _entity_literal(entity, literals)


def _entity_literal(entity: Mapping[str, Any], literals: Literals) -> None:
    type_ = str(entity.get("type"))
    if type_ == f"{NAMESPACE}::Dataset":
        literals.add(("resource", "dataset"), str(entity["id"]))
    elif type_ == f"{NAMESPACE}::Field":
        ds, _, name = str(entity["id"]).partition(".")
        literals.add(("resource", "dataset"), ds)
        literals.add(("resource", "name"), name)


# Expression nodes by the shape of their operand.
_UNARY = ("!", "neg", "isEmpty")
_BINARY = (
    "&&",
    "||",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "in",
    "contains",
    "containsAll",
    "containsAny",
    "getTag",
    "hasTag",
)


class _Reader:
    """Reads one policy's conditions, node by node (Cedar's JSON form): the variables it
    reads, and what the domain needs. A node it does not know refuses the set."""

    def __init__(self, literals: Literals) -> None:
        self.literals = literals
        self.reads: set[VarName] = set()
        # context.now nodes compared with a datetime literal (the only use the check allows).
        self._ordered_now: set[int] = set()

    def visit(self, node: object) -> None:
        if not (isinstance(node, Mapping) and len(node) == 1):
            raise SymbolicError(f"a policy has an expression the check does not know: {node!r}")
        ((op, arg),) = node.items()
        if op in _RELATIONS and isinstance(arg, Mapping):
            self._relation(op, arg)
        if op in _ARITHMETIC and _attrs_in(arg):
            raise SymbolicError(
                "a policy computes with an attribute (+, -, *); compare the attribute itself "
                "with a literal so that its values can be enumerated"
            )
        if op == "Value":
            for n in _walk(arg):
                if "__entity" in n and isinstance(n["__entity"], Mapping):
                    _entity_literal(n["__entity"], self.literals)
        elif op == "Var":
            self._identity(str(arg))
        elif op in (".", "has"):
            self._attribute(node, op)
        elif op in _UNARY:
            self.visit(arg["arg"])
        elif op in _BINARY:
            self.visit(arg["left"])
            self.visit(arg["right"])
        elif op == "like":
            self.visit(arg["left"])
        elif op == "is":
            self.visit(arg["left"])
            if "in" in arg:
                self.visit(arg["in"])
        elif op == "if-then-else":
            for part in ("if", "then", "else"):
                self.visit(arg[part])
        elif op == "Set" and isinstance(arg, list):
            for item in arg:
                self.visit(item)
        elif op == "Record" and isinstance(arg, Mapping):
            for item in arg.values():
                self.visit(item)
        elif isinstance(arg, list) and op not in ("Slot", "Unknown"):
            # An extension function (ip, decimal, datetime, duration and their methods).
            for item in arg:
                self.visit(item)
        else:
            raise SymbolicError(f"a policy has an expression the check does not know: {op!r}")

    def _identity(self, var: str) -> None:
        if var == "principal":
            raise SymbolicError(
                "a policy compares the principal entity itself; write the condition on "
                "principal attributes instead (identities are not enumerable)"
            )
        if var == "resource":
            self.reads.update({("resource", "dataset"), ("resource", "name")})
        elif var == "action":
            self.reads.add(ACTION)
        elif var == "context":
            raise SymbolicError(
                "a policy uses the whole context as a value; read its attributes instead"
            )

    def _attribute(self, node: Mapping[str, Any], op: str) -> None:
        inner = node[op]
        base = inner.get("left")
        if not (isinstance(base, Mapping) and base.keys() == {"Var"}):
            raise SymbolicError(
                "a policy reads an attribute of an entity it names or of an expression "
                "(the check sees only the request's principal, field and context); read "
                "the request's own attributes instead"
            )
        if base["Var"] not in ("principal", "resource", "context"):
            raise SymbolicError(f"a policy reads an attribute of {base['Var']!r}")
        if op == "has":
            # Every attribute of the schema is present on every request Bastion builds.
            return
        var = (str(base["Var"]), str(inner["attr"]))
        if var == NOW and id(node) not in self._ordered_now:
            raise SymbolicError(
                "a policy reads context.now other than comparing it with a datetime literal "
                "(<, <=, >, >=, ==, !=); only such comparisons can be checked at every instant"
            )
        self.reads.add(var)

    def _relation(self, op: str, operands: Mapping[str, Any]) -> None:
        left, right = operands.get("left"), operands.get("right")
        if op in _ORDER:
            for a, b in ((left, right), (right, left)):
                text = _datetime_literal(b)
                if _attr_of(a) == NOW and text is not None:
                    assert isinstance(a, Mapping)
                    self._ordered_now.add(id(a))
                    self.literals.instants.add(instant_ms(text))
        attrs = _attrs_in(operands) - {NOW}
        if len(attrs) > 1:
            self.literals.links.append(frozenset(attrs))
        values = list(_values_in(operands))
        patterns: list[Pattern] = []
        if op == "like":
            patterns.append(
                tuple(
                    str(p["Literal"]) if isinstance(p, Mapping) and "Literal" in p else None
                    for p in operands.get("pattern", [])
                )
            )
        for var in attrs:
            for v in values:
                self.literals.add(var, v)
            self.literals.patterns[var].update(patterns)


def _collect(est: Mapping[str, Any], literals: Literals) -> set[VarName]:
    """The variables one policy reads, adding what the domain needs to ``literals``."""
    principal = est.get("principal", {})
    if principal.get("op") not in ("All", "is") or "in" in principal:
        raise SymbolicError(
            "a policy names a particular principal in its scope; write the condition on "
            "principal attributes instead (identities are not enumerable)"
        )
    reader = _Reader(literals)
    for condition in est.get("conditions", []):
        reader.visit(condition["body"])
    reads = reader.reads
    if est.get("action", {}).get("op") != "All":
        reads.add(ACTION)
    resource = est.get("resource", {})
    if resource.get("op") != "All" and (resource.get("op") != "is" or "in" in resource):
        _add_entity_literals(resource, literals)
        reads.update({("resource", "dataset"), ("resource", "name")})
    literals.read |= reads
    return reads


def applies_to_fields(est: Mapping[str, Any]) -> bool:
    """Whether a policy can match a request on a Field (others never affect one)."""
    action = est.get("action", {})
    names: list[str] = []
    if action.get("op") == "==":
        names = [str(action["entity"]["id"])]
    elif action.get("op") == "in":
        names = [str(e["id"]) for e in action.get("entities", [])]
    if names and not set(names) & {a.value for a in FIELD_RESOURCE_ACTIONS}:
        return False
    resource = est.get("resource", {})
    if resource.get("op") == "is":
        return str(resource.get("entity_type")) == f"{NAMESPACE}::Field"
    return True


# ---------------------------------------------------------------------- the domain

# The most values a like pattern's witnesses may take to find, and the most distinct amr
# elements, principals and instants the domain may hold; beyond them the set is refused.
MAX_LIKE_STATES = 20_000
MAX_AMR_ELEMENTS = 8
MAX_PRINCIPALS = 500_000


@dataclass(frozen=True)
class _Closure:
    """The literals of each attribute with those of every attribute it is compared with."""

    strings: dict[VarName, set[str]]
    numbers: dict[VarName, set[int]]
    # How many attributes of the same kind meet in the attribute's group: as many distinct
    # values are needed between two literals to realize every order among them.
    spread: dict[VarName, int]

    def named(self, var: VarName) -> set[str]:
        return self.strings.get(var, set())


def _groups(literals: Literals) -> dict[VarName, frozenset[VarName]]:
    parent: dict[VarName, VarName] = {}

    def find(v: VarName) -> VarName:
        parent.setdefault(v, v)
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for link in literals.links:
        first, *rest = sorted(link)
        for other in rest:
            parent[find(other)] = find(first)
    members: dict[VarName, set[VarName]] = defaultdict(set)
    for v in list(parent):
        members[find(v)].add(v)
    return {v: frozenset(members[find(v)]) for v in parent}


def _kind(var: VarName) -> Kind | None:
    if var[0] == "principal":
        return PRINCIPAL_KINDS.get(var[1])
    if var[0] == "resource":
        return FIELD_ATTRS.get(var[1])
    return CONTEXT_ATTRS.get(var[1])


def _close(literals: Literals, config: PrincipalConfig) -> _Closure:
    groups = _groups(literals)
    every = {*literals.values, *literals.numbers, *literals.patterns, *groups}
    strings: dict[VarName, set[str]] = {}
    numbers: dict[VarName, set[int]] = {}
    spread: dict[VarName, int] = {}
    for var in every:
        group = groups.get(var, frozenset({var}))
        texts = {str(v) for g in group for v in literals.values.get(g, ()) if isinstance(v, str)}
        ints = {n for g in group for n in literals.numbers.get(g, ())}
        kind = _kind(var)
        same = [g for g in group if _kind(g) == kind]
        spread[var] = max(1, len(same))
        if len(group) > 1:
            # Values the derivation gives that no literal names: an attribute compared with
            # a principal attribute needs them too.
            for g in group:
                if g == ("principal", "clearance_level"):
                    ints |= set(CLEARANCE_LEVELS.values())
                elif g == ("principal", "clearance"):
                    texts |= set(CLEARANCE_LEVELS)
                elif g == ("principal", "employer"):
                    texts |= config.custodian_employers | config.covered_employers
                elif g in (("principal", "employer_country"), ("principal", "location_country")):
                    texts |= {"US", *config.countries_of_concern}
            # Attributes that meet must be able to be equal without naming a literal, and to
            # differ pairwise.
            texts |= {_shared(i) for i in range(len(same))}
        patterns = {p for g in group for p in literals.patterns.get(g, ())}
        if patterns:
            ordered = sorted(patterns, key=repr)
            upper = any(g[1] in _UPPER_CASED for g in group if g[0] == "principal")
            texts |= _like_witnesses(ordered, texts, spread[var], upper_only=False)
            if upper:
                texts |= _like_witnesses(ordered, texts, spread[var], upper_only=True)
        strings[var] = texts
        numbers[var] = ints
    return _Closure(strings, numbers, spread)


# Derivation upper-cases these, so a value only reaches a policy upper-cased.
_UPPER_CASED = ("employer_country", "location_country")


def _shared(i: int) -> str:
    # Upper case: it survives the derivation of a country unchanged.
    return SHARED if i == 0 else f"__SHARED{i}__"


def _like_witnesses(
    patterns: Sequence[Pattern], literals: set[str], per_class: int, *, upper_only: bool
) -> set[str]:
    """Strings that no literal names, ``per_class`` of them for every combination of the
    patterns that some such string matches (a breadth-first search of the product of the
    patterns' automata with the trie of the literals)."""
    chars = {c for p in patterns for c in p if c is not None} | {c for t in literals for c in t}
    # Characters no pattern or literal names all behave alike: one of them stands for all.
    fresh = next(
        c
        for c in map(chr, itertools.count(0x30))
        if c not in chars and c.isprintable() and (not upper_only or c == c.upper())
    )
    alphabet = sorted(c for c in {*chars, fresh} if not upper_only or c == c.upper())
    prefixes = {t[:i] for t in literals for i in range(len(t) + 1)}

    def close(p: Pattern, states: Iterable[int]) -> frozenset[int]:
        out = set(states)
        stack = list(out)
        while stack:
            i = stack.pop()
            if i < len(p) and p[i] is None and i + 1 not in out:
                out.add(i + 1)
                stack.append(i + 1)
        return frozenset(out)

    def step(p: Pattern, states: frozenset[int], c: str) -> frozenset[int]:
        nxt = set()
        for i in states:
            if i < len(p):
                if p[i] is None:
                    nxt.add(i)
                elif p[i] == c:
                    nxt.add(i + 1)
        return close(p, nxt)

    start = (tuple(close(p, {0}) for p in patterns), "")
    seen: dict[tuple[tuple[frozenset[int], ...], str | None], int] = defaultdict(int)
    found: dict[tuple[bool, ...], set[str]] = defaultdict(set)
    queue: deque[tuple[tuple[frozenset[int], ...], str | None, str]] = deque(
        [(start[0], start[1], "")]
    )
    seen[start] += 1
    while queue:
        states, trie, text = queue.popleft()
        if trie not in literals:
            signature = tuple(len(p) in s for p, s in zip(patterns, states, strict=True))
            if len(found[signature]) < per_class:
                found[signature].add(text)
        for c in alphabet:
            nxt_states = tuple(step(p, s, c) for p, s in zip(patterns, states, strict=True))
            nxt_text = text + c
            nxt_trie = nxt_text if trie is not None and nxt_text in prefixes else None
            key = (nxt_states, nxt_trie)
            if seen[key] >= per_class:
                continue
            seen[key] += 1
            if len(seen) > MAX_LIKE_STATES:
                raise SymbolicError(
                    "the like patterns of one attribute are too many or too long to be "
                    "enumerated; simplify them"
                )
            queue.append((nxt_states, nxt_trie, nxt_text))
    return {t for texts in found.values() for t in texts}


def _string_reps(var: VarName, named: Iterable[str], base: Iterable[str] = ()) -> list[Value]:
    seen = sorted({*base, *named})
    return [*seen, UNKNOWN if var[1] != "purpose" and var[1] != "ticket" else OTHER_TEXT]


MAX_LONG = 2**63 - 1


def _long_reps(numbers: Iterable[int], also: Iterable[int] = (), spread: int = 1) -> list[Value]:
    """0, 1, every compared number and ``spread`` neighbours on each side, and ``spread``
    above them all (counts: never negative)."""
    points = {0, 1, *also}
    for n in numbers:
        points.update(range(n - spread, n + spread + 1))
    top = max(points)
    points.update(range(top + 1, top + spread + 1))
    return sorted(p for p in points if 0 <= p <= MAX_LONG)


@dataclass(frozen=True)
class Domain:
    """The representatives of every variable, and the principals Bastion can derive."""

    values: Mapping[VarName, tuple[Value, ...]]
    # Each realizable principal: its token attributes and what Bastion derived from them.
    principals: tuple[Mapping[str, Value], ...]

    def index(self, var: VarName, value: Value) -> int:
        return self.values[var].index(value)


def _enum_values(type_name: str) -> list[str]:
    text = schema_text()
    start = text.index(f"entity {type_name} enum [")
    body = text[start : text.index("]", start)]
    return [part.strip().strip('"') for part in body.split("[", 1)[1].split(",") if part.strip()]


def enum_members(var: VarName) -> tuple[str, ...]:
    """The members of an enumerated attribute's type (classification, category,
    justification), as the schema declares them."""
    return tuple(_enum_values(ENUM_TYPES[var]))


def build_domain(literals: Literals, config: PrincipalConfig, *, max_approvers: int) -> Domain:
    closure = _close(literals, config)
    values: dict[VarName, tuple[Value, ...]] = {
        ACTION: tuple(sorted(a.value for a in FIELD_RESOURCE_ACTIONS)),
    }
    for attr, kind in FIELD_ATTRS.items():
        var = ("resource", attr)
        if kind == "enum":
            values[var] = (*_enum_values(ENUM_TYPES[var]), UNKNOWN)
        elif kind == "bool":
            values[var] = (False, True)
        else:
            values[var] = tuple(_string_reps(var, closure.named(var)))
    for attr, kind in CONTEXT_ATTRS.items():
        var = ("context", attr)
        if kind == "enum":
            values[var] = tuple(_enum_values(ENUM_TYPES[var]))
        elif kind == "bool":
            values[var] = (False, True)
        elif kind == "long":
            values[var] = tuple(
                _long_reps(
                    closure.numbers.get(var, ()), (max_approvers,), closure.spread.get(var, 1)
                )
            )
        else:
            values[var] = tuple(_string_reps(var, closure.named(var), base=("",)))
    if literals.instants or NOW in literals.read:
        # context.now is only compared with literals: an instant on each side of each, and
        # each itself, stand for every instant.
        points = {instant_ms(str(CHECK_INSTANT["__extn"]["arg"]))}
        for ms in literals.instants:
            points.update({ms - 1, ms, ms + 1})
        values[NOW] = tuple(instant_text(ms) for ms in sorted(points))

    principals = _principals(literals, closure, config)
    for attr in PRINCIPAL_KINDS:
        seen = sorted({p[attr] for p in principals}, key=repr)
        values[("principal", attr)] = tuple(seen)
    # An attribute compared with a principal attribute takes every value Bastion derives for
    # it (a country of concern, a clearance name, an amr method).
    for group in {frozenset(g) for g in _groups(literals).values()}:
        derived: set[Value] = set()
        for g in group:
            if g[0] == "principal" and g in values:
                for v in values[g]:
                    derived.update(v if isinstance(v, tuple) else (v,))
        for g in group:
            if g[0] != "principal" and g in values and _kind(g) in ("string", "long"):
                have = values[g]
                extra = [
                    v
                    for v in sorted(derived, key=repr)
                    if v not in have
                    and not isinstance(v, bool)
                    and isinstance(v, int) == (_kind(g) == "long")
                    and (not isinstance(v, int) or v >= 0)
                ]
                if extra:
                    values[g] = (*have, *extra)
    return Domain(values=values, principals=principals)


def _countries(var: VarName, closure: _Closure, config: PrincipalConfig) -> list[str]:
    named = closure.named(var)
    concern = sorted(config.countries_of_concern - named)
    reps = {"", "US", *named}
    if concern:
        reps.add(COUNTRY_OF_CONCERN_REP if COUNTRY_OF_CONCERN_REP in concern else concern[0])
    # One country that is neither the US, nor of concern, nor named.
    candidates = itertools.chain(
        (NON_US, "FR", "JP", "BR"),
        ("".join(p) for p in itertools.product(string.ascii_uppercase, repeat=2)),
    )
    reps.add(
        next(
            c
            for c in candidates
            if c not in named and c != "US" and c not in config.countries_of_concern
        )
    )
    return sorted(reps)


def _amr_sets(literals: Literals, closure: _Closure) -> list[tuple[str, ...]]:
    """Representative amr sets. When no policy reads amr, only mfa (derived from it) matters:
    one set with a second factor and one without. Otherwise every subset of the methods
    named, one more weak method and one more strong one (the empty set included)."""
    var = ("principal", "amr")
    named = closure.named(var)
    if var not in literals.read and not named:
        return [("pwd",), ("mfa", "pwd")]
    weak = next(m for m in ("pwd", "__weak__", "__weak2__") if m not in named)
    strong = sorted(_STRONG_AMR - named, key=lambda m: (m != "mfa", m))
    universe = sorted({*named, weak, *strong[:1]})
    if len(universe) > MAX_AMR_ELEMENTS:
        raise SymbolicError(
            f"policies name {len(named)} amr methods; at most {MAX_AMR_ELEMENTS - 2} can be "
            "enumerated (every set of them is a representative)"
        )
    return [
        tuple(sorted(c))
        for n in range(len(universe) + 1)
        for c in itertools.combinations(universe, n)
    ]


def _principals(
    literals: Literals, closure: _Closure, config: PrincipalConfig
) -> tuple[Mapping[str, Value], ...]:
    """Every distinct principal Bastion can derive from representative token attributes."""
    roles = _string_reps(("principal", "role"), closure.named(("principal", "role")))
    employers = _string_reps(
        ("principal", "employer"),
        closure.named(("principal", "employer")),
        base=(*config.custodian_employers, *config.covered_employers, ""),
    )
    clearances = sorted({*CLEARANCE_LEVELS, *closure.named(("principal", "clearance"))})
    amrs = _amr_sets(literals, closure)
    subjects = sorted({"", SHARED, *closure.named(("principal", "subject_id"))})
    services = _string_reps(
        ("principal", "service"), closure.named(("principal", "service")), base=("",)
    )
    employer_countries = _countries(("principal", "employer_country"), closure, config)
    location_countries = _countries(("principal", "location_country"), closure, config)
    axes: list[Sequence[Any]] = [
        roles,
        employers,
        employer_countries,
        location_countries,
        clearances,
        amrs,
        subjects,
        services,
    ]
    total = 1
    for axis in axes:
        total *= len(axis)
    if total > MAX_PRINCIPALS:
        raise SymbolicError(
            f"the policies name too many principal attribute values ({total} combinations, "
            f"more than {MAX_PRINCIPALS}); the principals cannot be enumerated"
        )
    out: dict[tuple[Value, ...], Mapping[str, Value]] = {}
    for role, employer, ec, lc, clearance, amr, subject, service in itertools.product(*axes):
        spec = _Token(str(role), str(employer), ec, lc, clearance, amr, subject, str(service))
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
    # A service's name is its token's sub (derive_attributes reads it for role "service").
    sub: str = ""
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
    if var == NOW:
        return {"__extn": {"fn": "datetime", "arg": str(value)}}
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
    context["now"] = cedar_value(NOW, assignment[NOW]) if NOW in assignment else CHECK_INSTANT
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
            context["now"] = (
                cedar_value(NOW, values[NOW]) if NOW in domain.values else CHECK_INSTANT
            )
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
    "enum_members",
    "read_policies",
]
