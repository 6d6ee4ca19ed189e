"""``explain``: for a principal and a request, which policies decided and what each field
becomes, as a plain model a reviewer reads through ``to_json`` (or ``bastion policy explain``,
which renders it: presentation belongs to the CLI, not to the policy domain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.policy.compiler import PolicyInfo
from bastion.policy.engine import PolicyEngine
from bastion.policy.plan import AccessPlan, GrantScope, PlanRequest
from bastion.policy.principal import PrincipalAttributes, PrincipalLike


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
