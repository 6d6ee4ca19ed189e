"""Contribution bounding as SQL, one text for DuckDB and Spark SQL.

The query never returns a row of the input: only per-group integer aggregates, already bounded
per user. Bounding, in order:

1. **Rows.** Filters (a measure that is NULL, NaN or infinite drops its row), then each value
   is clamped to the template's range and rounded to the measure's fixed-point unit (integers
   from here on; the clamp comes first, so no value can overflow the conversion).
2. **Rows per user and group (R).** Rows are first summed per (user, group). A user with
   ``n > R`` rows in a group contributes every aggregate scaled by ``R / n`` (integer floor,
   in fixed point for counts): the expectation of keeping R random rows, with less variance,
   and deterministic, so both engines agree to the last unit.
3. **Groups per user (G).** A user in more than G groups keeps G of them, chosen by
   ``md5(user | group | salt)`` with a fresh secret salt per query (MD5 is only a
   pseudo-random tie-breaker here, identical in both engines).

So one user changes any group's ``rows`` by at most ``R*W``, its ``total`` by at most
``R*max|value|`` and its ``users`` by 1, in at most G groups: the sensitivities the release
layer calibrates its noise to. Which aggregates a query computes (a measure's total, the rows
matching a flag, a histogram of the measure) is what its template asks for (``Aggregates``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from bastion.cleanroom.plan import QueryPlan

Dialect = Literal["duckdb", "spark"]
TABLE = "events"
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9 _.:+\-/@#]*$")
_SALT = re.compile(r"^[0-9a-f]{16,64}$")


class UnsafeLiteral(ValueError):
    pass


def _quote_ident(name: str, dialect: Dialect) -> str:
    # Names come from the validated catalog (lower-case identifiers); quoting guards keywords.
    return f"`{name}`" if dialect == "spark" else f'"{name}"'


def _lit(value: str) -> str:
    # Literals come from the catalog's declared domains, never from the data; refuse anything
    # that would need escaping rather than rely on two dialects' escaping rules.
    if not _SAFE_LITERAL.match(value):
        raise UnsafeLiteral("a declared domain value contains characters not allowed in SQL")
    return f"'{value}'"


def _idiv(a: str, b: str, dialect: Dialect) -> str:
    """Integer division of non-negative BIGINTs (floor == truncation here)."""
    return f"({a}) div ({b})" if dialect == "spark" else f"({a}) // ({b})"


def _double(x: float) -> str:
    return f"CAST('{x!r}' AS DOUBLE)"


@dataclass(frozen=True)
class BoundingSql:
    aggregates: str | None
    histogram: str | None


def build_sql(plan: QueryPlan, dialect: Dialect, salt: str, *, table: str = TABLE) -> BoundingSql:
    """The bounding query of the aggregates ``plan.template`` asks for, in one dialect."""
    if not _SALT.match(salt):
        raise ValueError("salt must be 16-64 lower-case hex characters")

    def q(name: str) -> str:
        return _quote_ident(name, dialect)

    groups = [f"g{i}" for i in range(len(plan.group_by))]
    R, W, G = plan.max_rows, plan.row_weight, plan.max_groups
    wanted = plan.template.aggregates(plan)

    select = [f"CAST({q(plan.subject)} AS STRING) AS uid"]
    conds = [f"{q(plan.subject)} IS NOT NULL"]
    for g, col, domain in zip(groups, plan.group_by, plan.domains, strict=True):
        select.append(f"CAST({q(col)} AS STRING) AS {g}")
        conds.append(f"{q(col)} IS NOT NULL")
        if domain is not None:
            # Rows outside a public dimension's declared domain are dropped before bounding.
            conds.append(f"CAST({q(col)} AS STRING) IN ({', '.join(_lit(v) for v in domain)})")
    for col, values in plan.where:
        conds.append(f"CAST({q(col)} AS STRING) IN ({', '.join(_lit(v) for v in values)})")
    if plan.measure is not None:
        m = plan.measure
        lo_u, hi_u = plan.clamp_units
        x = f"CAST({q(m.column)} AS DOUBLE)"
        # Clamped while still a DOUBLE, then floored: the same integer as clamping the rounded
        # value (lo_u and hi_u are integers), but no value, however large, reaches the BIGINT
        # cast out of range. Non-finite values (NaN, +-inf) are not measurements: dropped,
        # like NULL.
        in_units = f"{x} / {_double(m.unit)} + {_double(0.5)}"
        clamped = f"LEAST(GREATEST({in_units}, {_double(lo_u)}), {_double(hi_u)})"
        select.append(f"CAST(FLOOR({clamped}) AS BIGINT) AS v")
        conds.append(f"{q(m.column)} IS NOT NULL")
        conds.append(f"NOT isnan({x})")
        conds.append(f"ABS({x}) < {_double(math.inf)}")
    if wanted.flag is not None:
        column, value = wanted.flag
        select.append(f"CASE WHEN {q(column)} = {_lit(value)} THEN 1 ELSE 0 END AS clk")
    if wanted.histogram:
        if plan.measure is None:
            raise ValueError("a histogram is of a measure")
        lo_u, hi_u = plan.clamp_units
        b = _idiv(f"(v - {lo_u}) * {plan.bins}", str(hi_u - lo_u), dialect)

    gl = "".join(f", {g}" for g in groups)
    ctes = [f"base AS (SELECT {', '.join(select)} FROM {table} WHERE {' AND '.join(conds)})"]
    if wanted.histogram:
        ctes[0] = (
            f"base0 AS (SELECT {', '.join(select)} FROM {table} WHERE {' AND '.join(conds)}), "
            f"base AS (SELECT base0.*, LEAST({b}, {plan.bins - 1}) AS b FROM base0)"
        )
    ug_cols = ["COUNT(*) AS n"]
    if wanted.total:
        if plan.measure is None:
            raise ValueError("a total is of a measure")
        ug_cols.append("SUM(v) AS s")
    if wanted.flag is not None:
        ug_cols.append("SUM(clk) AS c")
    ctes.append(f"ug AS (SELECT uid{gl}, {', '.join(ug_cols)} FROM base GROUP BY uid{gl})")

    # A user cannot be in more groups than the public domains allow; skip the ranking then.
    needs_group_bound = bool(groups) and (plan.private_keys or plan.public_group_count > G)
    if needs_group_bound:
        parts = ", '|', ".join(["uid", *groups, f"'{salt}'"])
        ctes.append(
            f"ranked AS (SELECT ug.*, ROW_NUMBER() OVER (PARTITION BY uid "
            f"ORDER BY MD5(CONCAT({parts})){gl}) AS gn FROM ug), "
            f"sel AS (SELECT * FROM ranked WHERE gn <= {G})"
        )
    else:
        ctes.append("sel AS (SELECT * FROM ug)")

    def scaled(expr: str, weight: int) -> str:
        # Rows beyond R: the user's aggregate times R/n, floored, in units of 1/weight.
        return (
            f"CASE WHEN n <= {R} THEN ({expr}) * {weight} "
            f"ELSE {_idiv(f'({expr}) * {R * weight}', 'n', dialect)} END"
        )

    with_clause = "WITH " + ", ".join(ctes)
    order = f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}" if groups else ""
    gsel = "".join(f"{g}, " for g in groups)
    aggregates: str | None = None
    histogram: str | None = None
    if wanted.histogram:
        join = " AND ".join(["h.uid = sel.uid", *(f"h.{g} = sel.{g}" for g in groups)])
        hscaled = (
            f"CASE WHEN sel.n <= {R} THEN h.cnt * {W} "
            f"ELSE {_idiv(f'h.cnt * {R * W}', 'sel.n', dialect)} END"
        )
        histogram = (
            f"{with_clause}, hb AS (SELECT uid{gl}, b, COUNT(*) AS cnt FROM base "
            f"GROUP BY uid{gl}, b) "
            f"SELECT {''.join(f'h.{g}, ' for g in groups)}h.b, SUM({hscaled}) AS w "
            f"FROM hb h JOIN sel ON {join} "
            f"GROUP BY {', '.join([*(f'h.{g}' for g in groups), 'h.b'])} "
            f"ORDER BY {', '.join([*(f'h.{g}' for g in groups), 'h.b'])}"
        )
    else:
        cols = [f"SUM({scaled('n', W)}) AS rows_w", "COUNT(*) AS users"]
        cols.append(f"SUM({scaled('s', 1)}) AS total" if wanted.total else "0")
        cols.append(f"SUM({scaled('c', W)}) AS clicks_w" if wanted.flag is not None else "0")
        aggregates = f"{with_clause} SELECT {gsel}{', '.join(cols)} FROM sel{order}"
    return BoundingSql(aggregates=aggregates, histogram=histogram)
