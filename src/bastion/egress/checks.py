"""What a flow may not be: the checks a declaration passes before it loads, and again before
every run (the policy or the catalog may have changed since).

Each failed check is a ``Refusal`` with a stable code, the field it concerns and a sentence
saying why; a flow loads only with none. The checks, in order:

1. the dataset and every field exist in the catalog (``dataset.unknown``, ``field.unknown``);
2. no protected field, read or delivered (``field.protected``);
3. every identifier (a field the catalog pseudonymizes, or of the covered personal
   identifiers category) is pseudonymized or dropped (``identifier.not-pseudonymized``);
4. an aggregate flow groups by public dimensions with declared domains, bounds every sum
   and every subject's contribution (``aggregate.group-not-public``, ``aggregate.bounds``);
5. Cedar allows the recipient every field the flow reads (``recipient.denied``);
6. over 12 months the flow would not carry a 28 CFR 202.205 bulk amount of any category to
   its recipient's employer: pseudonymized records count, as the rule says
   (``bulk.threshold``); lifted only for a declared restricted transaction, which must then
   meet CISA's data-level controls instead: per-recipient tokens (no ``joinable_with``), no
   field of a sensitive category unless pseudonymized, and every time and place generalized
   (``restricted.joinable``, ``restricted.linkable-field``, ``restricted.not-generalized``);
7. flows named joinable are loaded, or loaded with it (``joinable.unknown-flow``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.catalog import Catalog, Classification, DatasetSpec, FieldSpec, FieldType
from bastion.catalog import SensitiveCategory as Category
from bastion.egress.model import Drop, Flow, Generalize, Grid, Pseudonymize
from bastion.errors import InputError
from bastion.policy.engine import PolicyEngine
from bastion.policy.principal import PrincipalSpec
from bastion.policy.thresholds import LEGAL_THRESHOLDS

RECIPIENT_ROLE = "recipient"


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class Review:
    """The outcome of the checks: refusals (none: the flow may load), the policies that
    decided its fields, and the categories it carries (what its runs count)."""

    refusals: tuple[Refusal, ...]
    policies: tuple[str, ...] = ()
    policy_sha256: str | None = None
    categories: frozenset[Category] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def codes(self) -> list[str]:
        return sorted({r.code for r in self.refusals})


ReachEstimate = Callable[[str], int]
"""How many distinct subjects a dataset's records belong to now (``vault.snapshot``)."""


@dataclass(frozen=True)
class BulkContext:
    """What the bulk check needs: how far a dataset reaches, what the recipient's employer
    already received in the window per category, and the limits in force."""

    reach: ReachEstimate
    employer_usage: Mapping[Category, int] = field(default_factory=dict)
    limits: Mapping[Category, int] = field(default_factory=lambda: dict(LEGAL_THRESHOLDS))


def recipient_principal(flow: Flow) -> PrincipalSpec:
    """The recipient as policy sees it: attributes from the loaded declaration, the role
    no token may carry, no clearance and no second factor."""
    r = flow.recipient
    return PrincipalSpec(
        id=r.id,
        role=RECIPIENT_ROLE,
        employer=r.employer,
        employer_country=r.employer_country,
        location_country=r.location_country,
    )


def is_identifier(spec: FieldSpec) -> bool:
    return spec.pseudonymize or spec.category is Category.COVERED_PERSONAL_IDENTIFIERS


def carried_categories(flow: Flow, ds: DatasetSpec) -> frozenset[Category]:
    """The 28 CFR 202 categories a records flow delivers: a field's category, and covered
    personal identifiers for a pseudonymized identifier (the rule counts pseudonymized
    data). An aggregate flow delivers no record of anyone, so none."""
    if flow.kind == "aggregate":
        return frozenset()
    out: set[Category] = set()
    for name in flow.delivered:
        if not ds.has_field(name):
            continue
        spec = ds.field(name)
        if spec.category is not None:
            out.add(spec.category)
        if spec.pseudonymize:
            out.add(Category.COVERED_PERSONAL_IDENTIFIERS)
    return frozenset(out)


def review(
    flow: Flow,
    catalog: Catalog,
    engine: PolicyEngine,
    *,
    bulk: BulkContext | None,
    known_flows: Iterable[str] = (),
) -> Review:
    """Every check of the module docstring; the refusals in the order found. ``bulk`` None
    skips the bulk estimate: a run asks for none, it counts what it really delivers."""
    try:
        ds = catalog.dataset(flow.source.dataset)
    except InputError:
        return Review(
            (Refusal("dataset.unknown", "the catalog has no such dataset", "source.dataset"),)
        )
    refusals = [*_unknown_fields(flow, ds)]
    if refusals:
        return Review(tuple(refusals))
    refusals += _protected(flow, ds)
    refusals += _identifiers(flow, ds)
    if flow.aggregate is not None:
        refusals += _aggregate(flow, ds)
    decided = engine.decide_egress(recipient_principal(flow), ds.name, list(flow.fields))
    for name in decided.denied:
        refusals.append(
            Refusal("recipient.denied", f"policy denies it to {flow.recipient.id}", name)
        )
    categories = carried_categories(flow, ds)
    if flow.restricted_transaction is not None:
        refusals += _restricted(flow, ds)
    elif bulk is not None:
        refusals += _bulk(flow, ds, categories, bulk)
    known = set(known_flows)
    for other in flow.joinable_with:
        if other not in known:
            refusals.append(
                Refusal("joinable.unknown-flow", f"no loaded flow is named {other!r}", other)
            )
    return Review(tuple(refusals), decided.policy_ids, decided.policy_sha256, categories)


def _unknown_fields(flow: Flow, ds: DatasetSpec) -> list[Refusal]:
    return [
        Refusal("field.unknown", f"dataset {ds.name!r} has no such field", f"fields.{name}")
        for name in flow.fields
        if not ds.has_field(name)
    ]


def _protected(flow: Flow, ds: DatasetSpec) -> list[Refusal]:
    return [
        Refusal(
            "field.protected",
            "a protected field never leaves through a flow, in any form",
            f"fields.{name}",
        )
        for name in flow.fields
        if ds.field(name).classification is Classification.PROTECTED
    ]


def _identifiers(flow: Flow, ds: DatasetSpec) -> list[Refusal]:
    out: list[Refusal] = []
    for name, transform in flow.fields.items():
        spec = ds.field(name)
        if is_identifier(spec) and not isinstance(transform, Pseudonymize | Drop):
            out.append(
                Refusal(
                    "identifier.not-pseudonymized",
                    "an identifier leaves only as the flow's pseudonym (or not at all)",
                    f"fields.{name}",
                )
            )
    return out


def _aggregate(flow: Flow, ds: DatasetSpec) -> list[Refusal]:
    agg = flow.aggregate
    assert agg is not None
    out: list[Refusal] = []
    for name in agg.group_by:
        if name not in flow.fields:
            out.append(Refusal("aggregate.field", "declare it under fields", f"group_by.{name}"))
        elif name not in ds.public_dimensions or ds.field(name).domain is None:
            out.append(
                Refusal(
                    "aggregate.group-not-public",
                    "an aggregate groups only by public dimensions with declared domains",
                    f"aggregate.group_by.{name}",
                )
            )
    for name, (low, high) in agg.sums.items():
        if name not in flow.fields:
            out.append(Refusal("aggregate.field", "declare it under fields", f"sums.{name}"))
        elif ds.field(name).type not in (FieldType.INT, FieldType.FLOAT):
            out.append(Refusal("aggregate.sum-type", "sums only numbers", f"aggregate.sums.{name}"))
        if not low < high:
            out.append(Refusal("aggregate.bounds", "needs lower < upper", f"aggregate.sums.{name}"))
    if agg.max_records_per_subject is None:
        out.append(
            Refusal(
                "aggregate.bounds",
                "bound each subject's contribution (max_records_per_subject), or the noise "
                "protects no one",
                "aggregate.max_records_per_subject",
            )
        )
    if agg.epsilon_per_run > agg.epsilon_budget:
        out.append(Refusal("aggregate.budget", "one run costs more than the budget", "aggregate"))
    if not out:
        # What only the release layer knows (a group field not kept as is, a sum field
        # generalized, too many groups, two outputs of one name): refused now, not at a run.
        # Imported here: the release layer brings OpenDP, which a records flow never needs.
        from bastion.egress.aggregate import plan_aggregate

        try:
            plan_aggregate(flow, ds)
        except InputError as exc:
            out.append(Refusal("aggregate.plan", exc.reason, exc.field))
    return out


def _restricted(flow: Flow, ds: DatasetSpec) -> list[Refusal]:
    out: list[Refusal] = []
    if flow.joinable_with:
        out.append(
            Refusal(
                "restricted.joinable",
                "a restricted transaction's tokens are its recipient's alone",
                "joinable_with",
            )
        )
    for name in flow.delivered:
        spec, transform = ds.field(name), flow.fields[name]
        if spec.category is not None and not isinstance(transform, Pseudonymize):
            out.append(
                Refusal(
                    "restricted.linkable-field",
                    "a restricted transaction carries no field that links to a person",
                    f"fields.{name}",
                )
            )
        temporal = spec.type in (FieldType.TIMESTAMP, FieldType.DATE, FieldType.GEO)
        if temporal and not isinstance(transform, Generalize | Grid):
            out.append(
                Refusal(
                    "restricted.not-generalized",
                    "a restricted transaction carries times and places only generalized",
                    f"fields.{name}",
                )
            )
    return out


def _bulk(
    flow: Flow, ds: DatasetSpec, categories: frozenset[Category], bulk: BulkContext
) -> list[Refusal]:
    if not categories:
        return []
    reach = bulk.reach(ds.name)
    out: list[Refusal] = []
    for category in sorted(categories):
        limit = bulk.limits.get(category)
        if limit is None:
            continue
        already = bulk.employer_usage.get(category, 0)
        if already + reach > limit:
            out.append(
                Refusal(
                    "bulk.threshold",
                    f"{ds.name} reaches {reach:,} subjects and {flow.recipient.employer} "
                    f"already received {category.value} of {already:,} in 12 months: more "
                    f"than the {limit:,} of 28 CFR 202.205 (pseudonymized data counts); "
                    "declare it a restricted transaction, or leave the category out",
                    None,
                )
            )
    return out
