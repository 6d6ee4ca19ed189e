"""``bastion cleanroom``: differentially private queries, budgets and the template catalog."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import cleanroom_app
from bastion.errors import InputError
from bastion.extras import require

budget_app = typer.Typer(
    name="budget",
    help="Privacy budgets: show them; set or reset them (administrator actions, logged).",
    invoke_without_command=True,
)

ANALYST_OPTION = typer.Option(
    None, "--analyst", envvar="BASTION_ANALYST", help="Analyst the query is charged to."
)
ORG_OPTION = typer.Option(
    None, "--org", envvar="BASTION_ORG", help="Partner organization the query is charged to."
)
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="The snapshot's directory (default: [cleanroom] data_dir or <home>/cleanroom).",
)


@contextmanager
def opened_cleanroom(
    home_path: Path | None, data: Path | None = None, engine: str | None = None
) -> Iterator[Any]:
    """A CleanRoom on the home's database and log, over the snapshot Bastion built from the
    vault. ``engine`` is opened before anything is charged (no snapshot, or a stale one, is a
    refusal with exit code 10, not a failed query); without one, the room can manage budgets
    but not answer queries."""
    require("analytics", "the clean room")
    if engine == "spark":
        require("spark", "the Spark engine")
    from bastion.cleanroom import CleanRoom, CleanRoomConfig, default_data_dir
    from bastion.cleanroom.snapshot_engine import SnapshotEngine
    from bastion.clock import SystemClock
    from bastion.home import Home
    from bastion.ledger.log import open_log
    from bastion.store import open_database

    home = Home.load(home_path)
    config = CleanRoomConfig.from_settings(home.settings)
    data_dir = data or default_data_dir(home.path, home.settings)
    max_age = home.settings.cleanroom.max_snapshot_age_seconds
    eng: Any = SnapshotEngine(engine or "duckdb", data_dir, SystemClock(), max_age_s=max_age)
    if engine:
        eng.open()
    try:
        db = open_database(home.database_url, bounds=home.settings.bounds)
        try:
            clock = SystemClock()
            log = open_log(home, db, clock, background=False)
            try:
                yield CleanRoom(db, log, clock, eng, config=config)
            finally:
                log.close()
        finally:
            db.close()
    finally:
        eng.close()


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _floats(value: str | None, name: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in _split(value)]
    except ValueError:
        raise InputError(f"--{name} takes comma-separated numbers") from None


def _where(values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in values:
        column, sep, rest = item.partition("=")
        if not sep or not column.strip():
            raise InputError("--where takes COLUMN=VALUE[,VALUE...]", field="where")
        out.setdefault(column.strip(), []).extend(_split(rest))
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _default_analyst(analyst: str | None) -> str:
    return analyst or getpass.getuser() or "analyst"


def result_table(result: Any) -> Table:
    table = Table(
        title=(
            f"{result.template}: ε={result.epsilon_spent:g}"
            + (f", δ={result.delta_spent:g}" if result.delta_spent else "")
            + f", {result.keys_released} groups released, ledger #{result.receipt.index}"
        )
    )
    group_cols = list(result.rows[0].group) if result.rows else []
    for col in group_cols:
        table.add_column(col)
    for col in ("statistic", "value", "noise scale", f"{result.confidence:.0%} CI"):
        table.add_column(col, justify="right" if col != "statistic" else "left")
    for row in result.rows:
        ci = f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]"
        table.add_row(
            *[row.group[c] for c in group_cols],
            row.statistic,
            _fmt(row.value),
            _fmt(row.noise_scale),
            ci,
        )
    return table


@cleanroom_app.command("query")
def query_cmd(
    template: str = typer.Argument(..., help="count, distinct_users, sum, mean, quantiles, ctr"),
    epsilon: float = typer.Option(..., "--epsilon", "-e", help="Privacy loss to spend."),
    group_by: str | None = typer.Option(None, "--group-by", "-g", help="Columns, comma-separated."),
    where: list[str] = typer.Option([], "--where", "-w", help="COLUMN=V1,V2 (public dimensions)."),
    measure: str | None = typer.Option(None, "--measure", "-m", help="Numeric measure."),
    quantiles: str | None = typer.Option(None, "--quantiles", help="e.g. 0.5,0.9"),
    clamp: str | None = typer.Option(None, "--clamp", help="LOW,HIGH for the measure."),
    bins: int | None = typer.Option(None, "--bins", help="Quantile histogram bins."),
    max_groups: int | None = typer.Option(None, "--max-groups", help="Groups per user."),
    max_rows: int | None = typer.Option(None, "--max-rows", help="Rows per user and group."),
    confidence: float | None = typer.Option(None, "--confidence", help="CI level, e.g. 0.95."),
    engine: str = typer.Option("duckdb", "--engine", help="duckdb (default) or spark."),
    chart: Path | None = typer.Option(None, "--chart", help="Also write a PNG bar chart here."),
    analyst: str | None = ANALYST_OPTION,
    org: str | None = ORG_OPTION,
    data: Path | None = DATA_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a differentially private query and print the released table."""
    with reported_errors(as_json):
        if chart is not None:
            require("charts", "--chart")  # before any budget is spent
        clamp_values = _floats(clamp, "clamp")
        if clamp_values is not None and len(clamp_values) != 2:
            raise InputError("--clamp takes LOW,HIGH", field="clamp")
        request: dict[str, Any] = {
            "template": template,
            "epsilon": epsilon,
            "group_by": _split(group_by),
            "where": _where(where),
            "measure": measure,
            "quantiles": _floats(quantiles, "quantiles"),
            "clamp": tuple(clamp_values) if clamp_values else None,
            "bins": bins,
            "max_groups_per_user": max_groups,
            "max_rows_per_group": max_rows,
            "confidence": confidence,
        }
        request = {k: v for k, v in request.items() if v not in (None, [], {})}
        if org is None:
            raise InputError("--org (or BASTION_ORG) names the partner organization to charge")
        with opened_cleanroom(home, data, engine) as room:
            result = room.run_query(request, analyst=_default_analyst(analyst), organization=org)
        if chart is not None:
            from bastion.cleanroom.chart import write_chart

            write_chart(result.rows, f"{template} (ε={epsilon:g})", chart)
        if as_json:
            emit_json({"ok": True, **result.to_json(), "chart": str(chart) if chart else None})
            return
        console.print(result_table(result))
        if chart is not None:
            console.print(f"Chart written to {chart}")


def _budget_table(budgets: list[Any]) -> Table:
    table = Table(title="Clean-room privacy budgets")
    for col in (
        "scope",
        "principal",
        "ε spent",
        "ε limit",
        "ε left",
        "δ spent",
        "δ limit",
        "queries",
    ):
        table.add_column(col, justify="left" if col in ("scope", "principal") else "right")
    for b in budgets:
        table.add_row(
            b.scope,
            b.principal,
            f"{b.epsilon_spent:g}",
            f"{b.epsilon_limit:g}",
            f"{b.epsilon_remaining:g}",
            f"{b.delta_spent:.3g}",
            f"{b.delta_limit:.3g}",
            str(b.queries),
        )
    return table


@budget_app.callback()
def budget_show(
    ctx: typer.Context,
    analyst: str | None = typer.Option(None, "--analyst", help="Only this analyst."),
    org: str | None = typer.Option(None, "--org", help="Only this organization."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show budgets (all, or one analyst's and/or one organization's)."""
    if ctx.invoked_subcommand is not None:
        return
    with reported_errors(as_json), opened_cleanroom(home) as room:
        budgets = room.budget_report(analyst, org)
        if as_json:
            emit_json({"ok": True, "budgets": [b.to_json() for b in budgets]})
            return
        console.print(_budget_table(budgets))


def _admin(actor: str | None) -> Any:
    from bastion.events import Actor

    name = actor or os.environ.get("BASTION_ACTOR") or getpass.getuser() or "operator"
    return Actor(id=name, kind="operator", role="privacy-admin")


SCOPE_ARGUMENT = typer.Argument(..., help="analyst or organization")
PRINCIPAL_ARGUMENT = typer.Argument(..., help="The analyst or organization id.")
REASON_OPTION = typer.Option(..., "--reason", help="Why (recorded in the ledger).")
ADMIN_OPTION = typer.Option(None, "--actor", help="Administrator id.")


def _report_budget(budget: Any, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, "budget": budget.to_json()})
    else:
        console.print(_budget_table([budget]))


@budget_app.command("set")
def budget_set(
    scope: str = SCOPE_ARGUMENT,
    principal: str = PRINCIPAL_ARGUMENT,
    epsilon: float = typer.Option(..., "--epsilon", help="Total epsilon allowed."),
    delta: float = typer.Option(1e-6, "--delta", help="Total delta allowed."),
    reason: str = REASON_OPTION,
    actor: str | None = ADMIN_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Set, raise or lower a budget. Recorded in the ledger before it takes effect."""
    with reported_errors(as_json), opened_cleanroom(home) as room:
        b = room.set_budget(
            scope, principal, epsilon=epsilon, delta=delta, admin=_admin(actor), reason=reason
        )
        _report_budget(b, as_json)


@budget_app.command("reset")
def budget_reset(
    scope: str = SCOPE_ARGUMENT,
    principal: str = PRINCIPAL_ARGUMENT,
    reason: str = REASON_OPTION,
    actor: str | None = ADMIN_OPTION,
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Forget what was spent (a new period). Recorded in the ledger before it takes effect."""
    with reported_errors(as_json), opened_cleanroom(home) as room:
        b = room.reset_budget(scope, principal, admin=_admin(actor), reason=reason)
        _report_budget(b, as_json)


@cleanroom_app.command("templates")
def templates_cmd(as_json: bool = JSON_OPTION) -> None:
    """List the query templates, the groupable dimensions and the measures."""
    from bastion.catalog import default_catalog
    from bastion.cleanroom import CleanRoomConfig
    from bastion.cleanroom.templates import registered_templates

    config = CleanRoomConfig()
    ds = default_catalog().dataset(config.dataset)
    dims: dict[str, list[str]] = {}
    for d in ds.public_dimensions:
        domain = ds.field(d).domain
        dims[d] = [str(v) for v in domain.members()] if domain is not None else []
    measures = {
        m.column: {"clamp_default": list(m.default_clamp), "range": [m.low, m.high], "unit": m.unit}
        for m in config.measures.get(ds.name, {}).values()
    }
    if as_json:
        emit_json(
            {
                "templates": {t.name: t.summary for t in registered_templates()},
                "public_dimensions": dims,
                "private_keys": list(ds.private_keys),
                "measures": measures,
                "max_epsilon_per_query": config.max_epsilon_per_query,
            }
        )
        return
    t = Table(title="Templates")
    t.add_column("template")
    t.add_column("answers")
    for tpl in registered_templates():
        t.add_row(tpl.name, tpl.summary)
    console.print(t)
    groups = Table(title="Group by")
    groups.add_column("column")
    groups.add_column("kind")
    groups.add_column("domain")
    for name, values in dims.items():
        shown = ", ".join(values[:8]) + (f", … ({len(values)})" if len(values) > 8 else "")
        groups.add_row(name, "public dimension", shown)
    for key in ds.private_keys:
        groups.add_row(key, "private key", "released only via DP partition selection")
    console.print(groups)


@cleanroom_app.command("snapshot")
def snapshot_cmd(
    full: bool = typer.Option(False, "--full", help="Rebuild from the whole change feed."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Build or refresh the clean room's snapshot from the vault (recorded in the ledger)."""
    with reported_errors(as_json):
        require("analytics", "the clean room's snapshot")
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        from bastion.cleanroom import CleanRoomConfig, default_data_dir
        from bastion.cleanroom.snapshot import SnapshotBuilder
        from bastion.clock import SystemClock
        from bastion.home import Home
        from bastion.ledger.log import open_log
        from bastion.store import open_database
        from bastion.vault import open_vault

        h = Home.load(home)
        clock = SystemClock()
        db = open_database(h.database_url, bounds=h.settings.bounds)
        try:
            log = open_log(h, db, clock, background=False)
            try:
                builder = SnapshotBuilder(
                    open_vault(h, db, clock),
                    log,
                    clock,
                    default_data_dir(h.path, h.settings),
                    config=CleanRoomConfig.from_settings(h.settings),
                )
                bar = Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    disable=as_json,
                    transient=True,
                )
                with bar:
                    task = bar.add_task("opening records", total=None)

                    def progress(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=total)

                    result = builder.refresh(full=full, progress=progress)
            finally:
                log.close()
        finally:
            db.close()
        if as_json:
            emit_json({"ok": True, **result.to_json()})
            return
        m = result.manifest
        console.print(
            f"Snapshot {m.file}: {m.records:,} records of {m.dataset} ({result.mode}; "
            f"{result.opened:,} opened, {result.removed:,} dropped), change feed through "
            f"#{m.cursor}, ledger #{m.ledger_index}",
            highlight=False,
        )


cleanroom_app.add_typer(budget_app)
