"""The clean room's part of ``bastion demo``: the ad partner's day.

Bastion builds the clean room's snapshot from the vault (recorded in the ledger first; a
shredded subject's events are not in it); an administrator grants the partner a budget
(logged); the partner asks for CTR by campaign and reach by age band x region, then asks for
more than its budget allows and is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion.cleanroom.service import CleanRoom, QueryRefused, QueryResult
from bastion.cleanroom.snapshot import SnapshotBuilder
from bastion.cleanroom.snapshot_engine import SnapshotEngine
from bastion.clock import Clock
from bastion.events import Actor
from bastion.ledger.api import LedgerWriter
from bastion.store import Database
from bastion.vault import Vault, ingest_file

PARTNER = "adpartner.example"
ANALYST = "analyst@adpartner.example"
PRIVACY_OFFICER = Actor(id="dpo@custodian.example", kind="operator", role="privacy-officer")


def _ensure_events(vault: Vault, scratch: Path, console: Console) -> None:
    """Events in the vault (the story ingested them already; on its own, this scene does)."""
    if vault.stats().records.get("events"):
        return
    from bastion.synth import SynthSpec, generate

    result = generate(SynthSpec(seed=7, users=3_000, videos=500, events=60_000), scratch)
    ingest_file(vault, "events", scratch / "events.parquet")
    console.print(f"Ingested {result.rows['events']:,} synthetic events into the vault")


def _ctr_table(result: QueryResult, limit: int = 12) -> Table:
    table = Table(
        title=f"CTR by campaign (ε={result.epsilon_spent:g}, δ={result.delta_spent:g}; "
        f"{result.keys_released} campaigns passed DP partition selection)"
    )
    for col in ("campaign", "CTR", "95% CI", "noise scale"):
        table.add_column(col, justify="left" if col == "campaign" else "right")
    rows = sorted(result.rows, key=lambda r: r.group["campaign_id"])[:limit]
    for r in rows:
        table.add_row(
            r.group["campaign_id"],
            "—" if r.value is None else f"{r.value:.2%}",
            f"[{(r.ci_low or 0):.2%}, {(r.ci_high or 0):.2%}]",
            f"{r.noise_scale:.3g}",
        )
    return table


def _reach_table(result: QueryResult) -> Table:
    bands = sorted({r.group["age_band"] for r in result.rows})
    regions = list(dict.fromkeys(r.group["region"] for r in result.rows))
    cell = {(r.group["age_band"], r.group["region"]): r for r in result.rows}
    scale = result.rows[0].noise_scale if result.rows else 0.0
    table = Table(
        title=f"Reach (distinct users) by age band x region (ε={result.epsilon_spent:g}, "
        f"noise scale {scale:g} users per cell)"
    )
    table.add_column("age band")
    for region in regions:
        table.add_column(region, justify="right")
    for band in bands:
        table.add_row(band, *[f"{(cell[(band, reg)].value or 0):,.0f}" for reg in regions])
    return table


def demo(
    db: Database,
    ledger: LedgerWriter,
    clock: Clock,
    vault: Vault,
    snapshot_dir: Path,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the ad partner's scenario; returns what happened (for ``bastion demo --json``)."""
    out = console or Console()
    started = time.perf_counter()
    _ensure_events(vault, snapshot_dir.parent / "cleanroom-synth", out)
    snapshot = SnapshotBuilder(vault, ledger, clock, snapshot_dir).refresh()
    m = snapshot.manifest
    out.print(
        f"Snapshot built from the vault: {m.records:,} events, fields {', '.join(m.fields)} "
        f"(user_id as its token), recorded first as ledger #{m.ledger_index}; erased "
        "subjects' events are not in it, and the clean room reads nothing else"
    )
    engine = SnapshotEngine("duckdb", snapshot_dir, clock, max_age_s=300)
    try:
        room = CleanRoom(db, ledger, clock, engine)
        room.set_budget(
            "organization",
            PARTNER,
            epsilon=10.0,
            delta=1e-6,
            admin=PRIVACY_OFFICER,
            reason="ad partner contract: quarterly privacy budget",
        )
        room.set_budget(
            "analyst",
            ANALYST,
            epsilon=2.5,
            delta=1e-6,
            admin=PRIVACY_OFFICER,
            reason="ad partner analyst onboarding",
        )
        out.print(f"Budgets granted (logged): {ANALYST} ε=2.5, {PARTNER} ε=10")

        ctr = room.run_query(
            {
                "template": "ctr",
                "epsilon": 1.0,
                "group_by": ["campaign_id"],
                "max_rows_per_group": 3,
            },
            analyst=ANALYST,
            organization=PARTNER,
        )
        out.print(_ctr_table(ctr))
        reach = room.run_query(
            {"template": "distinct_users", "epsilon": 1.0, "group_by": ["age_band", "region"]},
            analyst=ANALYST,
            organization=PARTNER,
        )
        out.print(_reach_table(reach))
        refused = False
        try:
            room.run_query(
                {
                    "template": "sum",
                    "epsilon": 1.0,
                    "measure": "revenue_usd",
                    "group_by": ["campaign_id"],
                },
                analyst=ANALYST,
                organization=PARTNER,
            )
        except QueryRefused as exc:
            refused = True
            out.print(
                f"[bold red]Revenue by campaign (ε=1): {exc}[/] — the analyst's budget is spent"
            )
        budget = room.budgets.get("analyst", ANALYST)
        assert budget is not None
        out.print(
            f"Analyst budget: ε {budget.epsilon_spent:g} of {budget.epsilon_limit:g} spent "
            f"in {budget.queries} queries; every query and refusal is on the ledger"
        )
    finally:
        engine.close()
    return {
        "snapshot_records": m.records,
        "snapshot_ledger_index": m.ledger_index,
        "ctr_campaigns_released": ctr.keys_released,
        "ctr_ledger_index": ctr.receipt.index,
        "reach_groups": reach.keys_released,
        "reach_ledger_index": reach.receipt.index,
        "third_query_refused": refused,
        "analyst_epsilon_spent": budget.epsilon_spent,
        "seconds": round(time.perf_counter() - started, 2),
    }
