"""Rich rendering of a policy ``Explanation`` for ``bastion policy explain``."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bastion.policy import Explanation, FieldPlan, Transform

_STYLE = {
    Transform.CLEAR: "bold green",
    Transform.GENERALIZE: "cyan",
    Transform.MASK: "yellow",
    Transform.PSEUDONYM: "magenta",
    Transform.DENY: "bold red",
}


def render_explanation(explanation: Explanation) -> RenderableType:
    """The principal and decision as a header, then the fields and the deciding policies."""
    p, plan = explanation.principal, explanation.plan
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
    for info in explanation.policies:
        policies.add_row(
            info.id,
            Text(info.effect, style="red" if info.effect == "forbid" else "green"),
            info.obligations or "-",
            info.description,
        )
    parts: list[RenderableType] = [head]
    if plan.fields:
        parts.append(fields)
    if explanation.policies:
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
