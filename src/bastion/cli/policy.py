"""``bastion policy``: validate, load, show and explain Cedar policies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.syntax import Syntax
from rich.table import Table

from bastion.catalog import Catalog, load_catalog
from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import policy_app
from bastion.cli.render_explain import render_explanation
from bastion.clock import Clock, SystemClock
from bastion.errors import InputError
from bastion.events import Actor
from bastion.home import Home
from bastion.policy import (
    Action,
    CompiledPolicies,
    JustificationType,
    PlanRequest,
    PolicyEngine,
    PolicyRuntime,
    PolicyStore,
    PrincipalSpec,
    compile_policies,
    default_pack_text,
    default_policies,
    explain,
    initialize_policy,
    schema_text,
)
from bastion.policy.invariants import (
    InvariantResult,
    check_invariants,
    invariants_for,
    parse_invariants,
    shipped_invariants,
)
from bastion.policy.symbolic import SymbolicError
from bastion.store import Database

MAX_INPUT_BYTES = 1024 * 1024
M = TypeVar("M", bound=BaseModel)


def read_text_arg(value: str, what: str) -> str:
    """Inline text, or ``@path`` to read it from a file."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise InputError(f"{what} file is larger than {MAX_INPUT_BYTES} bytes", file=str(path))
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what}: {type(exc).__name__}", file=str(path)) from None


def read_principal(value: str, option: str = "--principal-json") -> PrincipalSpec:
    """A principal as JSON (or @file.json): id, role, employer, countries, clearance, amr."""
    text = read_text_arg(value, "principal")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON ({exc.msg} at line {exc.lineno})", file=option) from None
    if not isinstance(data, dict):
        raise InputError("must be a JSON object", file=option)
    if isinstance(data.get("amr"), list):
        data["amr"] = tuple(data["amr"])
    return PrincipalSpec.parse(data, source=option)


def build_model(cls: type[M], source: str, **values: Any) -> M:
    """Validate CLI options into a model; a bad value is an InputError naming the option."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(first["msg"], file=source, field=where) from None


def read_policy_file(path: Path) -> str:
    return read_text_arg(f"@{path}", "policy")


@dataclass
class PolicyContext:
    home: Home
    db: Database
    ledger: Any
    clock: Clock
    catalog: Catalog
    store: PolicyStore
    runtime: PolicyRuntime


@contextmanager
def policy_context(home: Path | None) -> Iterator[PolicyContext]:
    """Open the home's database and log, with the policy tables in place."""
    from bastion.ledger.log import open_log
    from bastion.vault import home_catalog
    from bastion.wiring import open_store

    h = Home.load(home)
    db = open_store(h)
    ledger: Any = None
    try:
        clock = SystemClock()
        ledger = open_log(h, db, clock)
        initialize_policy(db)
        store = PolicyStore(db, ledger, clock, invariants=invariants_for(h.settings, h.path))
        catalog = home_catalog(h)
        yield PolicyContext(h, db, ledger, clock, catalog, store, PolicyRuntime(store, catalog))
    finally:
        close = getattr(ledger, "close", None)
        if callable(close):
            close()
        db.close()


@contextmanager
def _public_text(ctx: PolicyContext) -> Iterator[None]:
    """The typed reason of a load reaches the public log as the approval service's typed text
    does (``bastion access``): a keyed commitment by default, per the home's free_text."""
    from bastion.gateway.runtime import public_text_for
    from bastion.vault import open_vault

    vault = open_vault(ctx.home, ctx.db, ctx.clock)
    try:
        ctx.store.public_text = public_text_for(ctx.home, ctx.db, vault)
        yield
    finally:
        vault.close()


def _policies_table(compiled: CompiledPolicies) -> Table:
    table = Table(title=f"Policies ({compiled.sha256[:12]})")
    for col in ("@id", "effect", "actions", "obligation", "description"):
        table.add_column(col, overflow="fold")
    for p in compiled.policies:
        table.add_row(
            p.id,
            f"[{'red' if p.effect == 'forbid' else 'green'}]{p.effect}[/]",
            ", ".join(sorted(a.value for a in p.actions)) if p.actions else "any",
            p.obligations or "-",
            p.description,
        )
    return table


@policy_app.command("validate")
def validate_cmd(
    file: Path = typer.Argument(..., help="Cedar policy file to check."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a policy file against the Bastion schema and annotation rules (no home needed)."""
    with reported_errors(as_json):
        compiled = compile_policies(read_policy_file(file), source=str(file))
        if as_json:
            emit_json(
                {
                    "ok": True,
                    "sha256": compiled.sha256,
                    "policies": [p.to_json() for p in compiled.policies],
                }
            )
        else:
            console.print(f"[green]valid[/]: {len(compiled.policies)} policies, {compiled.sha256}")
            console.print(_policies_table(compiled))


def read_policy_source(path: Path | None) -> tuple[str, str]:
    """A policy set from a file, or every ``*.cedar`` of a directory in name order (a pack);
    the shipped pack when no path is given. Returns (text, source name)."""
    if path is None:
        return default_pack_text(), "shipped pack"
    if path.is_dir():
        files = sorted(path.glob("*.cedar"))
        if not files:
            raise InputError("the directory holds no .cedar file", file=str(path))
        return "\n".join(read_policy_file(f) for f in files), str(path)
    return read_policy_file(path), str(path)


def _counterexample_table(result: InvariantResult) -> Table:
    assert result.counterexample is not None
    cx = result.counterexample.to_json()
    table = Table(title=f"counterexample to {result.invariant.id}", show_header=False)
    table.add_column("where", style="bold")
    table.add_column("value", overflow="fold")
    for part in ("principal", "resource", "context"):
        shown = {k: v for k, v in cx[part].items() if v not in ("", [], None)}
        table.add_row(part, ", ".join(f"{k}={v!r}" for k, v in shown.items()))
    table.add_row("action", cx["action"])
    table.add_row("allowed by", ", ".join(cx["allowed_by"]) or "-")
    if "denied_with" in cx:
        table.add_row(
            "but denied with", ", ".join(f"{k}={v!r}" for k, v in cx["denied_with"].items())
        )
    return table


@policy_app.command("check")
def check_cmd(
    path: Path | None = typer.Argument(
        None, help="Cedar policy file, or a directory of .cedar files; default the shipped pack."
    ),
    invariants: Path | None = typer.Option(
        None, "--invariants", help="Invariants YAML; default the shipped invariants."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Prove every invariant over the whole request space; exit 1 with a counterexample for
    each one the set breaks (the same check every policy load runs)."""
    with reported_errors(as_json):
        text, source = read_policy_source(path)
        compiled = compile_policies(text, source=source)
        declared = (
            parse_invariants(read_text_arg(f"@{invariants}", "invariants"), source=str(invariants))
            if invariants is not None
            else shipped_invariants()
        )
        try:
            report = check_invariants(compiled, declared)
        except SymbolicError as exc:
            raise InputError(f"cannot be checked: {exc}", file=source) from None
        if as_json:
            emit_json({**report.to_json(), "source": source})
        else:
            table = Table(title=f"Invariants of {source} ({compiled.sha256[:12]})")
            for col in ("invariant", "holds", "description"):
                table.add_column(col, overflow="fold")
            for r in report.results:
                mark = "[green]yes[/]" if r.holds else "[bold red]NO[/]"
                table.add_row(r.invariant.id, mark, r.invariant.description)
            console.print(table)
            for r in report.broken:
                console.print(_counterexample_table(r))
            console.print(
                f"{len(report.results)} invariants over {report.policies_checked} policies, "
                f"{report.table_rows} Cedar evaluations, {report.seconds:.1f} s"
            )
        if not report.ok:
            raise typer.Exit(1)


@policy_app.command("schema")
def schema_cmd(as_json: bool = JSON_OPTION) -> None:
    """Print the Cedar schema every policy is validated against."""
    if as_json:
        emit_json({"ok": True, "schema": schema_text()})
    else:
        console.print(Syntax(schema_text(), "rust", word_wrap=True))


@policy_app.command("load")
def load_cmd(
    file: Path = typer.Argument(..., help="Cedar policy file (or a directory of them) to load."),
    reason: str = typer.Option(..., "--reason", help="Why the policy changes (recorded)."),
    actor: str = typer.Option("operator", "--actor", help="Who loads it (recorded)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate, record in the ledger, then activate a policy set; an invalid one is refused."""
    with reported_errors(as_json):
        text, _source = read_policy_source(file)
        if not reason.strip():
            raise InputError("a policy change needs a reason", field="--reason")
        with policy_context(home) as ctx, _public_text(ctx):
            who = Actor(id=actor, kind="operator")
            result = ctx.store.load(text, who, reason.strip(), source=str(file))
        if as_json:
            emit_json({"ok": True, **result.to_json()})
        elif result.changed:
            console.print(
                f"Loaded policy v{result.version} {result.sha256[:12]} "
                f"({len(result.compiled.policies)} policies), ledger index "
                f"{result.receipt.index if result.receipt else '-'}"
            )
        else:
            console.print(f"Unchanged: v{result.version} {result.sha256[:12]} is already active")


@policy_app.command("show")
def show_cmd(
    text: bool = typer.Option(False, "--text", help="Print the policy text."),
    history: bool = typer.Option(False, "--history", help="List every version."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the policy in force (and its history)."""
    with reported_errors(as_json):
        with policy_context(home) as ctx:
            active = ctx.store.active()
            versions = ctx.store.history() if history else []
        if active is None:
            raise InputError("no policy is loaded: run `bastion policy load FILE --reason ...`")
        compiled = compile_policies(active.text, source=f"policy v{active.version}")
        if as_json:
            out: dict[str, Any] = {
                "ok": True,
                **active.summary(),
                "policies": [p.to_json() for p in compiled.policies],
            }
            if text:
                out["text"] = active.text
            if history:
                out["history"] = [v.summary() for v in versions]
            emit_json(out)
            return
        console.print(
            f"Policy v{active.version} {active.sha256}\n"
            f"loaded {active.loaded_at} by {active.actor_id}: {active.reason} "
            f"(ledger index {active.ledger_index})"
        )
        console.print(_policies_table(compiled))
        if history:
            table = Table(title="History")
            for col in ("version", "sha256", "loaded", "by", "reason", "ledger"):
                table.add_column(col)
            for v in versions:
                table.add_row(
                    str(v.version),
                    v.sha256[:12],
                    v.loaded_at,
                    v.actor_id,
                    v.reason,
                    str(v.ledger_index),
                )
            console.print(table)
        if text:
            console.print(Syntax(active.text, "rust", word_wrap=True))


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return tuple(dict.fromkeys(out))


@policy_app.command("explain")
def explain_cmd(
    principal_json: str = typer.Option(
        ..., "--principal-json", help="The principal as JSON, or @file.json."
    ),
    dataset: str = typer.Option(..., "--dataset", help="Dataset of the catalog."),
    action: Action = typer.Option(Action.READ, "--action", help="read, search, export, analyze."),
    fields: list[str] | None = typer.Option(
        None, "--fields", help="Fields (comma-separated or repeated); default: all."
    ),
    purpose: str = typer.Option("", "--purpose", help="Stated purpose."),
    ticket: str = typer.Option("", "--ticket", help="Ticket reference."),
    ticket_subjects: list[str] | None = typer.Option(
        None, "--ticket-subject", help="A subject named in the ticket; repeat."
    ),
    justification: JustificationType | None = typer.Option(
        None, "--justification", help="Justification type."
    ),
    policy_file: Path | None = typer.Option(
        None, "--policy", help="Explain against this policy file instead of the one in force."
    ),
    pack: bool = typer.Option(False, "--pack", help="Explain against the shipped policy pack."),
    catalog_file: Path | None = typer.Option(
        None, "--catalog", help="Catalog YAML (with --policy/--pack; default: shipped)."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Which policies decide a request, and what each field becomes."""
    with reported_errors(as_json):
        who = read_principal(principal_json)
        request = build_model(
            PlanRequest,
            "request",
            dataset=dataset,
            action=action,
            fields=_split(fields),
            purpose=purpose,
            ticket=ticket,
            ticket_subjects=_split(ticket_subjects) or (),
            justification=justification,
        )
        if policy_file is not None or pack:
            from bastion.catalog import default_catalog

            compiled = (
                compile_policies(read_policy_file(policy_file), source=str(policy_file))
                if policy_file is not None
                else default_policies()
            )
            catalog = load_catalog(catalog_file) if catalog_file else default_catalog()
            engine = PolicyEngine(compiled, catalog, clock=SystemClock())
            result = explain(engine, who, request)
        else:
            with policy_context(home) as ctx:
                result = explain(ctx.runtime.engine(), who, request)
        if as_json:
            emit_json({"ok": True, **result.to_json()})
        else:
            console.print(render_explanation(result))
