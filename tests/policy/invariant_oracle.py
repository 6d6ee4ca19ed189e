"""An oracle for the invariant checker that shares none of its reasoning.

It draws concrete field requests at random (real token attributes, not the checker's
representatives), derives the principal with the gateway's own ``derive_attributes``, asks
Cedar about the whole policy set, and reads the invariants' scopes and expectations itself.
It also replays a counterexample the checker reports, from its JSON, the way a reviewer
would: re-derive the principal from the token attributes, check that the request is in the
invariant's scope, and ask Cedar.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cedarpy

from bastion.policy.compiler import CompiledPolicies, cedar_id_order
from bastion.policy.invariants import Counterexample, Expectation, Invariant, Range, Scope
from bastion.policy.principal import (
    CLEARANCE_LEVELS,
    PrincipalSpec,
    derive_attributes,
)
from bastion.policy.vocabulary import REVEAL_ORDER, Transform

NS = "Bastion"
ROLES = (
    # The pack's roles, more often: most permits are about them.
    *("engineer", "support", "sre", "security", "investigator") * 2,
    *("moderator",) * 3,
    "ad_partner",
    "auditor",
    "subject",
    "security_officer",
    "privacy_officer",
    "policy_admin",
    "ticketing_service",
    "service",
    # Roles no policy names.
    "intern",
    "analyst",
    "contractor",
    "Engineer",
)
EMPLOYERS = (*("custodian",) * 6, "parentco", "adco", "globalco", "audit-firm")
COUNTRIES = (
    *("US",) * 8,
    *("CA", "GB", "IE", "DE", "FR", "SG", "JP", "BR", "IN", "MX", "AU", "IL"),
    *("CN", "HK", "MO", "RU", "IR", "KP", "CU", "VE"),
)
AMR_METHODS = ("pwd", "mfa", "otp", "hwk", "sms", "kba", "face", "swk", "pin")
CLASSIFICATIONS = (*("protected", "interoperable", "public") * 2, "secret", "restricted")
CATEGORIES = (
    "none",
    "none",
    "covered_personal_identifiers",
    "covered_personal_identifiers",
    "precise_geolocation",
    "biometric",
    "health",
    "financial",
    "human_omic",
    "voiceprint",  # a category added after the pack was written
)
JUSTIFICATIONS = (
    *("break_glass", "production_alert") * 2,
    "none",
    "customer_initiated_support",
    "service_operation",
    "security_review",
    "production_alert",
    "third_party_data_request",
    "customer_authorized_workflow",
    "break_glass",
)
FIELDS = (
    ("users", "email", "string"),
    ("users", "user_id", "string"),
    ("users", "country", "string"),
    ("users", "lat", "float"),
    ("videos", "title", "string"),
    ("videos", "upload_ip", "string"),
    ("events", "event_id", "string"),
    ("events", "revenue", "float"),
    ("genomes", "sequence", "string"),
    ("billing", "card", "string"),
)
PURPOSES = ("", "", "support case 42", "fraud review", "x", " ")
TICKETS = ("", "", "SUP-1042", "SUP-7", "INC-77", "SEC-9", "INC-7-P1", "jane.doe", "x")
SUBJECT_COUNTS = (0, 1, 2, 7, 99, 100, 101, 5000)
# break_glass twice: its planted bugs need enough samples among the added write actions.
ACTIONS = ("read", "search", "export", "break_glass", "break_glass", "write", "delete")
# A service principal's name is its token's sub (the id here); "mailer" is named by no policy.
SERVICES = ("profile-service", "content-service", "events-service", "mailer")
INSTANTS = (
    "2025-06-01T00:00:00Z",
    "2026-01-01T00:00:00Z",
    "2026-03-01T00:00:00Z",
    "2026-07-01T12:00:00Z",
    "2030-01-01T00:00:00Z",
)


@dataclass(frozen=True)
class Sample:
    """One concrete field request: token attributes, what Bastion derived, field, context."""

    spec: PrincipalSpec
    principal: Mapping[str, Any]  # the derived Cedar attributes
    action: str
    resource: Mapping[str, Any]
    context: Mapping[str, Any]  # plain values; "now" as an ISO instant


def _pick_country(rng: random.Random) -> str | None:
    return None if rng.random() < 0.05 else rng.choice(COUNTRIES)


def sample_requests(rng: random.Random, n: int) -> list[Sample]:
    out = []
    for i in range(n):
        role = rng.choice(ROLES)
        employer = None if rng.random() < 0.05 else rng.choice(EMPLOYERS)
        amr = tuple(rng.sample(AMR_METHODS, rng.choice((0, 0, 1, 1, 2, 3))))
        spec = PrincipalSpec(
            id=rng.choice(SERVICES) if role == "service" else f"p{i}",
            role=role,
            employer=employer,
            employer_country=_pick_country(rng),
            location_country=_pick_country(rng),
            clearance=rng.choice(list(CLEARANCE_LEVELS)),
            amr=amr,
            subject_id=rng.choice((None, None, "u1")),
        )
        dataset, name, type_ = rng.choice(FIELDS)
        resource = {
            "dataset": dataset,
            "name": name,
            "type": type_,
            "classification": rng.choice(CLASSIFICATIONS),
            "category": rng.choice(CATEGORIES),
            "pseudonymize": rng.random() < 0.4,
        }
        grant = rng.random() < 0.5
        context = {
            "purpose": rng.choice(PURPOSES),
            "justification": rng.choice(JUSTIFICATIONS),
            "ticket": rng.choice(TICKETS),
            "approvals": rng.randint(0, 9),
            "grant": grant,
            "break_glass": rng.random() < 0.4,
            "subject_count": rng.choice(SUBJECT_COUNTS),
            "now": rng.choice(INSTANTS),
        }
        out.append(
            Sample(
                spec=spec,
                principal=derive_attributes(spec).cedar_attrs(),
                action=rng.choice(ACTIONS),
                resource=resource,
                context=context,
            )
        )
    return out


# ---------------------------------------------------------------------- asking Cedar


def _entity(type_: str, id_: str) -> dict[str, str]:
    return {"type": f"{NS}::{type_}", "id": id_}


def _cedar_context(context: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(context)
    out["justification"] = {"__entity": _entity("Justification", str(context["justification"]))}
    now = str(context.get("now", "2026-01-01T00:00:00Z"))
    out["now"] = {"__extn": {"fn": "datetime", "arg": now}}
    return out


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    reveals: int  # REVEAL_ORDER of the least revealing matched permit (0 when denied)
    policies: tuple[str, ...]


class Batch:
    """Requests and their entities, built once, asked of any number of policy sets."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        # A field's uid is "dataset.name", as the engine names it; one uid with different
        # attributes goes to another group, so that each group's entities are consistent.
        groups: dict[int, list[int]] = defaultdict(list)
        entities: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        seen: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for i, s in enumerate(self.samples):
            fid = f"{s.resource['dataset']}.{s.resource['name']}"
            key = tuple(sorted(s.resource.items()))
            variants = seen[fid]
            if key not in variants:
                variants.append(key)
            g = variants.index(key)
            groups[g].append(i)
            ents = entities[g]
            pid = f"probe{i}"
            ents[f"P:{pid}"] = {
                "uid": _entity("Principal", pid),
                "attrs": dict(s.principal),
                "parents": [],
            }
            ents[f"F:{fid}"] = {
                "uid": _entity("Field", fid),
                "attrs": {
                    **s.resource,
                    "classification": {
                        "__entity": _entity("Classification", str(s.resource["classification"]))
                    },
                    "category": {"__entity": _entity("Category", str(s.resource["category"]))},
                },
                "parents": [_entity("Dataset", str(s.resource["dataset"]))],
            }
            ds = str(s.resource["dataset"])
            ents[f"D:{ds}"] = {"uid": _entity("Dataset", ds), "attrs": {"name": ds}, "parents": []}
        self.groups = dict(groups)
        self.entities = {
            g: cedarpy.Entities.from_json_str(json.dumps(list(e.values())))
            for g, e in entities.items()
        }

    def request(self, i: int, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        s = self.samples[i]
        return {
            "principal": _entity("Principal", f"probe{i}"),
            "action": _entity("Action", s.action),
            "resource": _entity("Field", f"{s.resource['dataset']}.{s.resource['name']}"),
            "context": _cedar_context(context if context is not None else s.context),
        }

    def ask(
        self,
        compiled: CompiledPolicies,
        which: Sequence[int] | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> dict[int, Outcome]:
        """Cedar's decision for each request (``changes`` replaces context values)."""
        wanted = set(range(len(self.samples)) if which is None else which)
        out: dict[int, Outcome] = {}
        for g, members in self.groups.items():
            idx = [i for i in members if i in wanted]
            if not idx:
                continue
            reqs = [self.request(i, {**self.samples[i].context, **(changes or {})}) for i in idx]
            results = cedarpy.is_authorized_batch(reqs, compiled.policy_set, self.entities[g])
            for i, res in zip(idx, results, strict=True):
                out[i] = outcome(compiled, res)
        return out


def outcome(compiled: CompiledPolicies, res: Any) -> Outcome:
    allowed = bool(res.allowed) and not res.diagnostics.errors
    infos = [
        compiled.by_cedar_id[r]
        for r in sorted(res.diagnostics.reasons, key=cedar_id_order)
        if r in compiled.by_cedar_id
    ]
    reveals = 0
    if allowed:
        # A write permit carries no transform: an allowed write is the whole value.
        reveals = min(
            (REVEAL_ORDER[i.transform] for i in infos if i.transform is not None),
            default=REVEAL_ORDER[Transform.CLEAR],
        )
    return Outcome(allowed, reveals, tuple(i.id for i in infos))


# ---------------------------------------------------------------------- reading invariants


def holds(cond: Any, value: Any) -> bool:
    """One invariant condition on one value, read from the invariants' documentation."""
    if isinstance(cond, Mapping):
        cond = Range.model_validate(cond)
    if isinstance(cond, Range):
        number = isinstance(value, int) and not isinstance(value, bool)
        if cond.min is not None and not (number and value >= cond.min):
            return False
        if cond.max is not None and not (number and value <= cond.max):
            return False
        return cond.not_in is None or value not in cond.not_in
    if isinstance(cond, list):
        return any(_same(value, c) for c in cond)
    return _same(value, cond)


def _same(value: Any, cond: Any) -> bool:
    return type(value) is type(cond) and value == cond


def principal_holds(conds: Mapping[str, Any], principal: Mapping[str, Any]) -> bool:
    for name, cond in conds.items():
        if name == "not":
            if principal_holds(cond, principal):
                return False
        elif not holds(cond, _plain(principal[name])):
            return False
    return True


def _plain(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def in_scope(
    scope: Scope,
    principal: Mapping[str, Any],
    action: str,
    resource: Mapping[str, Any],
    context: Mapping[str, Any],
) -> bool:
    if scope.action is not None and action not in scope.action:
        return False
    if not principal_holds(scope.principal, principal):
        return False
    if not all(holds(c, resource[k]) for k, c in scope.resource.items()):
        return False
    return all(holds(c, context[k]) for k, c in scope.context.items())


def requirements(inv: Invariant) -> list[tuple[tuple[Scope, ...], Any]]:
    """Each (scopes that must all hold, expectation) of an invariant, unjoined."""
    if inv.require is None:
        return [((inv.when,), inv.expect)]
    return [((inv.when, r.when), r.expect) for r in inv.require]


def violations(
    batch: Batch, compiled: CompiledPolicies, invariants: Sequence[Invariant]
) -> dict[str, list[int]]:
    """For each invariant, the requests of the batch that break it (brute force)."""
    decided = batch.ask(compiled)
    out: dict[str, list[int]] = {}
    for inv in invariants:
        bad: set[int] = set()
        for scopes, expect in requirements(inv):
            candidates = [
                i
                for i, s in enumerate(batch.samples)
                if decided[i].allowed
                and all(in_scope(sc, s.principal, s.action, s.resource, s.context) for sc in scopes)
            ]
            if expect == "deny":
                bad.update(candidates)
                continue
            assert isinstance(expect, Expectation)
            if expect.at_most is not None:
                limit = REVEAL_ORDER[expect.at_most]
                bad.update(i for i in candidates if decided[i].reveals > limit)
            if expect.only_if_allowed_with is not None and candidates:
                changes = expect.only_if_allowed_with.context
                other = batch.ask(compiled, candidates, changes)
                bad.update(i for i in candidates if not other[i].allowed)
        out[inv.id] = sorted(bad)
    return out


# ---------------------------------------------------------------------- replaying


@dataclass(frozen=True)
class _Token:
    """Token attributes as an issuer would send them (no validation: replay what was said)."""

    id: str
    role: str
    employer: str | None
    employer_country: str | None
    location_country: str | None
    clearance: str
    amr: tuple[str, ...]
    subject_id: str | None
    sub: str = ""


def replay(compiled: CompiledPolicies, inv: Invariant, cx: Counterexample) -> None:
    """Assert, from outside the checker, that a reported counterexample is real."""
    doc = cx.to_json()
    p = doc["principal"]
    token = _Token(
        id="replayed",
        role=p["role"],
        employer=p["employer"] or None,
        employer_country=p["employer_country"] or None,
        location_country=p["location_country"] or None,
        clearance=p["clearance"],
        amr=tuple(p["amr"]),
        subject_id=p["subject_id"] or None,
        sub=p["service"],
    )
    derived = derive_attributes(token).cedar_attrs()
    if p["role"] == "subject" and p["subject_id"] == "probe":
        # The checker's probe id stands for the subject's own id.
        derived["subject_id"] = "probe"
    for key in ("clearance_level", "mfa", "covered_person", "custodian", "service"):
        assert derived[key] == p[key], f"{inv.id}: {key} is not what Bastion derives: {doc}"
    context = dict(doc["context"])
    resource = doc["resource"]
    scoped = [
        (scopes, expect)
        for scopes, expect in requirements(inv)
        if all(in_scope(sc, derived, doc["action"], resource, context) for sc in scopes)
    ]
    assert scoped, f"{inv.id}: the counterexample is outside the invariant's scope: {doc}"
    sample = Sample(
        spec=PrincipalSpec(id="replayed", role="x"),
        principal=derived,
        action=doc["action"],
        resource=resource,
        context=context,
    )
    batch = Batch([sample])
    got = batch.ask(compiled)[0]
    assert got.allowed, f"{inv.id}: Cedar denies the counterexample: {doc}"
    assert list(doc["allowed_by"]) == list(got.policies), f"{inv.id}: other permits: {doc}"
    broken = False
    for _, expect in scoped:
        if expect == "deny":
            broken = True
        elif isinstance(expect, Expectation) and expect.at_most is not None:
            broken |= got.reveals > REVEAL_ORDER[expect.at_most]
        elif isinstance(expect, Expectation) and expect.only_if_allowed_with is not None:
            changes = expect.only_if_allowed_with.context
            if doc.get("denied_with") is not None:
                denied = doc["denied_with"]
                assert {k: v for k, v in denied.items() if k not in changes} == {
                    k: v for k, v in context.items() if k not in changes
                }, f"{inv.id}: the compared request differs in more than {changes}"
            other = Batch([replace(sample, context={**context, **changes})]).ask(compiled)[0]
            broken |= not other.allowed
    assert broken, f"{inv.id}: the counterexample meets the expectation: {doc}"
