"""``distinct_users``: how many distinct users each group reaches.

Each user counts once per group (no ``max_rows_per_group``), in at most G groups: L-inf 1,
L1 G; private keys only through partition selection on the same user counts."""

from __future__ import annotations

from bastion.cleanroom.plan import QueryTemplate, register_template
from bastion.cleanroom.release import Releaser, ResultRow


class DistinctUsers(QueryTemplate):
    name = "distinct_users"
    summary = "number of distinct users (reach)"
    parameters: frozenset[str] = frozenset()

    def release(self, r: Releaser) -> tuple[list[ResultRow], int]:
        return r.counts("users", 1, 1.0, "distinct_users")


TEMPLATE: QueryTemplate = register_template(DistinctUsers())
