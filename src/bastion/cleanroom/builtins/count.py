"""``count``: the number of events per group.

Sensitivity: one user adds at most R rows of weight W to a group, in at most G groups
(L-inf R*W, L1 G*R*W); private keys are released only through partition selection on the
same bounded counts."""

from __future__ import annotations

from bastion.cleanroom.plan import QueryTemplate, register_template
from bastion.cleanroom.release import Releaser, ResultRow


class Count(QueryTemplate):
    name = "count"
    summary = "number of events"
    parameters = frozenset({"max_rows_per_group"})

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        return r.counts("rows_w", r.R * r.W, float(r.W), "count")


TEMPLATE: QueryTemplate = register_template(Count())
