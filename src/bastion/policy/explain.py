"""``explain``: for a principal and a request, which policies decided and what each field
becomes, in a form a reviewer (or ``bastion policy explain``) can read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bastion.policy.compiler import PolicyInfo
from bastion.policy.engine import PolicyEngine
from bastion.policy.plan import AccessPlan, FieldPlan, GrantScope, PlanRequest
from bastion.policy.principal import PrincipalAttributes, PrincipalLike
from bastion.policy.vocabulary import Transform

_STYLE = {
    Transform.CLEAR: "bold green",
    Transform.GENERALIZE: "cyan",
    Transform.MASK: "yellow",
    Transform.PSEUDONYM: "magenta",
    Transform.DENY: "bold red",
}


@dataclass(frozen=True)
class Explanation:
    principal: PrincipalAttributes
    request: PlanRequest
    plan: AccessPlan
    policies: tuple[PolicyInfo, ...]

    def to_json(self) -> dict[str, Any]:
        p = self.principal
        return {
            "principal": {
                "id": p.id,
                **p.cedar_attrs(),
                "covered_reasons": list(p.covered_reasons),
            },
            "request": self.request.model_dump(mode="json"),
            "plan": self.plan.to_json(),
            "policies": [info.to_json() for info in self.policies],
        }

    def render(self) -> RenderableType:
        p, plan = self.principal, self.plan
        head = Text()
        head.append(f"principal {p.id}", style="bold")
        head.append(
            f"  role={p.role} employer={p.employer or '-'} ({p.employer_country or '-'}) "
            f"located={p.location_country or '-'} clearance={p.clearance} mfa={p.mfa}\n"
        )
        if p.covered_person:
            head.append("covered person: ", style="bold red")
            head.append("; ".join(p.covered_reasons) + "\n")
        head.append(f"{plan.action.value} {plan.dataset}: ", style="bold")
        head.append(plan.decision.upper(), style="bold green" if plan.allowed else "bold red")
        head.append(f"   policy {plan.policy_sha256[:12]}\n")
        if plan.row_filter is not None:
            rf = plan.row_filter
            head.append(
                f"rows: only subjects by {rf.kind.value} ({len(rf.subjects)} allowed; "
                f"{', '.join(rf.policies)})\n"
            )
        if plan.approval is not None:
            a = plan.approval
            head.append(
                f"needs approval: {a.approvers} distinct approvers for {', '.join(a.fields)} "
                f"({', '.join(a.policies)})\n",
                style="yellow",
            )
        if plan.denied_reason:
            head.append(f"denied: {plan.denied_reason}\n", style="red")

        fields = Table(title="Fields", show_lines=False)
        for col in ("field", "classification", "category", "becomes", "decided by", "why"):
            fields.add_column(col, overflow="fold")
        for f in plan.fields:
            becomes = Text(f.transform.value, style=_STYLE[f.transform])
            if f.needs_approval and f.transform_if_approved:
                becomes.append(f" ({f.transform_if_approved.value} if approved)", style="yellow")
            fields.add_row(
                f.field,
                f.classification.value,
                f.category.value if f.category else "-",
                becomes,
                "\n".join(f.policies) or "(none)",
                _why(f),
            )
        policies = Table(title="Deciding policies")
        for col in ("@id", "effect", "obligation", "description"):
            policies.add_column(col, overflow="fold")
        for info in self.policies:
            policies.add_row(
                info.id,
                Text(info.effect, style="red" if info.effect == "forbid" else "green"),
                info.obligations or "-",
                info.description,
            )
        parts: list[RenderableType] = [head]
        if plan.fields:
            parts.append(fields)
        if self.policies:
            parts.append(policies)
        return Group(*parts)


def _why(f: FieldPlan) -> str:
    """The reason in a few words; the deciding policies have their own column."""
    if f.released:
        note = "least revealing transform wins" if "least revealing" in f.reason else ""
        return "permitted" + (f"; {note}" if note else "") + (" (via grant)" if f.via_grant else "")
    if f.needs_approval:
        return f"forbidden until {f.approvers_required} distinct approvers approve"
    if not f.policies:
        return f.reason
    return "forbidden (forbid wins)" if "forbidden" in f.reason else f.reason


def explain(
    engine: PolicyEngine,
    principal: PrincipalLike,
    request: PlanRequest,
    *,
    grant: GrantScope | None = None,
) -> Explanation:
    plan = engine.plan(principal, request, grant=grant)
    named = {p.id: p for p in engine.policies.policies}
    used = [named[i] for i in plan.policies if i in named]
    return Explanation(engine.attributes(principal), request, plan, tuple(used))
