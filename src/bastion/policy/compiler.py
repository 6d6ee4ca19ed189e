"""Turn Cedar policy text into a checked, ready-to-evaluate policy set, or refuse it.

A set loads only if (1) it parses, (2) Cedar's validator accepts it against the Bastion
schema (unknown attributes, actions, entity types, enum values and type errors are refused),
and (3) its annotations follow Bastion's rules, so that a reviewer can trust what they read
next to each policy:

* every policy has a unique ``@id``; no annotation key outside the known set;
* a permit that can release a field carries ``@transform`` (clear, generalize, mask,
  pseudonym); nothing else does;
* ``@row_filter`` only on such permits, with a known filter;
* ``@approvers("N")`` only on forbids whose conditions mention ``context.grant`` (the grant is
  what lifts them), 1 <= N <= 9.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import cedarpy
from cedarpy import pst

from bastion.errors import InputError
from bastion.policy.vocabulary import (
    ANNOTATION_APPROVERS,
    ANNOTATION_DESCRIPTION,
    ANNOTATION_ID,
    ANNOTATION_ROW_FILTER,
    ANNOTATION_TRANSFORM,
    KNOWN_ANNOTATIONS,
    MAX_APPROVERS,
    RELEASE_ACTIONS,
    Action,
    RowFilterKind,
    Transform,
)

NAMESPACE = "Bastion"
SCHEMA_FILE = "bastion.cedarschema"
PACK_PACKAGE = "bastion.policy.pack"
MAX_POLICY_BYTES = 1024 * 1024


class PolicyRejected(InputError):
    """A policy set failed parsing, schema validation or Bastion's annotation rules."""

    def __init__(self, errors: list[str], *, source: str = "policy") -> None:
        self.errors = errors
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        super().__init__(f"policy set refused: {shown}", file=source)


@dataclass(frozen=True)
class PolicyInfo:
    """One policy as a reviewer reads it: its name, effect and the obligations beside it."""

    cedar_id: str
    id: str
    effect: Literal["permit", "forbid"]
    description: str
    transform: Transform | None
    row_filter: RowFilterKind | None
    approvers: int | None
    actions: frozenset[Action] | None  # None: every action
    # Whether the conditions read context.grant / context.break_glass (a grant could flip it).
    mentions_grant: bool = False

    @property
    def obligations(self) -> str:
        """The obligations in one line, e.g. ``transform=mask, approvers=2``; empty if none."""
        return ", ".join(
            x
            for x in (
                f"transform={self.transform.value}" if self.transform else "",
                f"row_filter={self.row_filter.value}" if self.row_filter else "",
                f"approvers={self.approvers}" if self.approvers else "",
            )
            if x
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "effect": self.effect,
            "description": self.description,
            "transform": self.transform.value if self.transform else None,
            "row_filter": self.row_filter.value if self.row_filter else None,
            "approvers": self.approvers,
            "actions": sorted(a.value for a in self.actions) if self.actions else "any",
        }


@dataclass(frozen=True)
class CompiledPolicies:
    """A validated policy set, parsed once and shared by every decision."""

    text: str
    sha256: str
    policy_set: cedarpy.PolicySet
    policies: tuple[PolicyInfo, ...]
    by_cedar_id: Mapping[str, PolicyInfo]
    # Whether any policy reads context.now: then decisions depend on the instant and the
    # engine must not reuse a plan computed at another time.
    uses_now: bool = False

    @property
    def permits_mention_grant(self) -> bool:
        return any(p.effect == "permit" and p.mentions_grant for p in self.policies)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.policies]

    def info(self, cedar_id: str) -> PolicyInfo:
        return self.by_cedar_id[cedar_id]


@functools.cache
def schema_text() -> str:
    return resources.files(PACK_PACKAGE).joinpath(SCHEMA_FILE).read_text("utf-8")


@functools.cache
def bastion_schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(schema_text())


@functools.cache
def default_pack_text() -> str:
    """The shipped policy pack: every ``*.cedar`` file of the pack, in name order."""
    pack = resources.files(PACK_PACKAGE)
    names = sorted(p.name for p in pack.iterdir() if p.name.endswith(".cedar"))
    return "\n".join(pack.joinpath(n).read_text("utf-8") for n in names)


def policy_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cedar_id_order(cedar_id: str) -> tuple[int, str]:
    """Cedar names policies policy0, policy1, ... in text order; keep that order."""
    digits = cedar_id.removeprefix("policy")
    return (int(digits), "") if digits.isdigit() else (1 << 62, cedar_id)


def _walk(node: object) -> Iterator[object]:
    yield node
    if isinstance(node, Mapping):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, tuple):
        for v in node:
            yield from _walk(v)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield from _walk(getattr(node, f.name))


def _mentions_context_attr(policy: pst.Template, attr: str) -> bool:
    return any(
        isinstance(n, pst.GetAttr)
        and n.attr == attr
        and isinstance(n.base, pst.Var)
        and n.base.name == "context"
        for n in _walk(policy.clauses)
    )


def _actions(scope: object) -> frozenset[Action] | None:
    known = {a.value for a in Action}
    # Unknown action names are left to the schema validator, which reports them.
    if isinstance(scope, pst.ActionEq):
        uids: tuple[pst.EntityUid, ...] = (scope.entity,)
    elif isinstance(scope, pst.ActionIn):
        uids = scope.entities
    else:
        return None
    return frozenset(Action(u.id) for u in uids if u.id in known)


def _resource_may_be_field(scope: object) -> bool:
    field_type = f"{NAMESPACE}::Field"
    if isinstance(scope, pst.ScopeIs | pst.ScopeIsIn):
        return str(scope.entity_type) == field_type
    if isinstance(scope, pst.ScopeEq):
        entity = scope.entity
        return not isinstance(entity, pst.EntityUid) or str(entity.type) == field_type
    # ``in Dataset::"x"`` or no constraint: fields are among the possible resources.
    return True


def _lint(policy: pst.Template, seen_ids: dict[str, str]) -> tuple[PolicyInfo | None, list[str]]:
    ann = dict(policy.annotations)
    errors: list[str] = []
    pid = ann.get(ANNOTATION_ID, "")
    label = f"policy {pid!r}" if pid else f"policy #{policy.id.removeprefix('policy')}"
    if not pid:
        errors.append(f'{label}: every policy needs an @id("...") annotation')
    elif pid in seen_ids:
        errors.append(f"{label}: @id is used twice")
    else:
        seen_ids[pid] = policy.id
    for key in sorted(set(ann) - KNOWN_ANNOTATIONS):
        errors.append(
            f"{label}: unknown annotation @{key} (known: {', '.join(sorted(KNOWN_ANNOTATIONS))})"
        )

    actions = _actions(policy.action)
    releases_fields = (
        policy.effect == "permit"
        and (actions is None or bool(actions & RELEASE_ACTIONS))
        and _resource_may_be_field(policy.resource)
    )

    transform: Transform | None = None
    raw_transform = ann.get(ANNOTATION_TRANSFORM)
    if raw_transform is not None:
        allowed = [t.value for t in Transform if t is not Transform.DENY]
        if raw_transform not in allowed:
            errors.append(f"{label}: @transform must be one of {', '.join(allowed)}")
        elif not releases_fields:
            errors.append(f"{label}: @transform belongs only on permits that release fields")
        else:
            transform = Transform(raw_transform)
    elif releases_fields:
        errors.append(
            f"{label}: a permit that can release fields must say how, with @transform"
            '("clear" | "generalize" | "mask" | "pseudonym")'
        )

    row_filter: RowFilterKind | None = None
    raw_filter = ann.get(ANNOTATION_ROW_FILTER)
    if raw_filter is not None:
        allowed_filters = [RowFilterKind.TICKET_SUBJECTS.value]
        if raw_filter not in allowed_filters:
            errors.append(f"{label}: @row_filter must be one of {', '.join(allowed_filters)}")
        elif not releases_fields:
            errors.append(f"{label}: @row_filter belongs only on permits that release fields")
        else:
            row_filter = RowFilterKind(raw_filter)

    approvers: int | None = None
    raw_approvers = ann.get(ANNOTATION_APPROVERS)
    if raw_approvers is not None:
        if policy.effect != "forbid":
            errors.append(f"{label}: @approvers belongs only on forbids that a grant lifts")
        elif not raw_approvers.isdigit() or not 1 <= int(raw_approvers) <= MAX_APPROVERS:
            errors.append(f"{label}: @approvers must be a number from 1 to {MAX_APPROVERS}")
        elif not _mentions_context_attr(policy, "grant"):
            errors.append(
                f"{label}: @approvers on a forbid that no grant can lift "
                "(its conditions never mention context.grant)"
            )
        else:
            approvers = int(raw_approvers)

    if errors:
        return None, errors
    return (
        PolicyInfo(
            cedar_id=policy.id,
            id=pid,
            effect=policy.effect,
            description=ann.get(ANNOTATION_DESCRIPTION, ""),
            transform=transform,
            row_filter=row_filter,
            approvers=approvers,
            actions=actions,
            mentions_grant=_mentions_context_attr(policy, "grant")
            or _mentions_context_attr(policy, "break_glass"),
        ),
        [],
    )


def compile_policies(text: str, *, source: str = "policy") -> CompiledPolicies:
    """Parse, validate against the schema and lint a policy set; raise PolicyRejected."""
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise PolicyRejected([f"policy text exceeds {MAX_POLICY_BYTES} bytes"], source=source)
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
        tree = policy_set.to_pst()
    except ValueError as exc:
        raise PolicyRejected([f"does not parse: {exc}"], source=source) from None
    if tree.templates:
        raise PolicyRejected(["templates are not supported; write static policies"], source=source)
    if not tree.static_policies:
        raise PolicyRejected(
            ["the policy set is empty (everything would be denied)"], source=source
        )

    errors: list[str] = []
    result = cedarpy.validate_policies(text, bastion_schema())
    if not result.validation_passed:
        names = result.id_annotations_by_policy_id
        for err in result.errors:
            who = names.get(err.policy_id) or err.policy_id or "policy set"
            errors.append(f"{who}: {err.error}")

    infos: list[PolicyInfo] = []
    seen: dict[str, str] = {}
    uses_now = any(_mentions_context_attr(t, "now") for t in tree.static_policies.values())
    # Policy ids are positional (policy0, policy1, ...): sort numerically to keep file order.
    for cedar_id in sorted(tree.static_policies, key=cedar_id_order):
        info, lint_errors = _lint(tree.static_policies[cedar_id], seen)
        errors.extend(lint_errors)
        if info is not None:
            infos.append(info)
    if errors:
        raise PolicyRejected(errors, source=source)
    return CompiledPolicies(
        text=text,
        sha256=policy_sha256(text),
        policy_set=policy_set,
        policies=tuple(infos),
        by_cedar_id={p.cedar_id: p for p in infos},
        uses_now=uses_now,
    )


@functools.cache
def default_policies() -> CompiledPolicies:
    return compile_policies(default_pack_text(), source="pack")
