"""The clean room's demo scenario: CTR by campaign, reach by age band x region, refusal."""

from __future__ import annotations

import io
from pathlib import Path

from cleanroom_ledger import recorded
from rich.console import Console
from snapshot_support import make_vault

from bastion.clock import FixedClock
from bastion.demo.cleanroom import demo
from bastion.events import AnalyticsBudgetChange, AnalyticsQuery, CleanroomSnapshot
from bastion.ledger.log import Log
from bastion.store import Database


def test_demo_story(db: Database, ledger: Log, clock: FixedClock, tmp_path: Path) -> None:
    buf = io.StringIO()
    vault = make_vault(db, tmp_path / "keys", clock)
    report = demo(db, ledger, clock, vault, tmp_path / "cleanroom", Console(file=buf, width=140))
    text = buf.getvalue()
    assert report["snapshot_records"] == 60_000 and "Snapshot built from the vault" in text
    assert isinstance(recorded(ledger)[report["snapshot_ledger_index"]], CleanroomSnapshot)
    assert report["third_query_refused"] is True
    assert report["ctr_campaigns_released"] > 0 and report["reach_groups"] == 56
    assert report["analyst_epsilon_spent"] == 2.0
    assert "CTR by campaign" in text and "Reach (distinct users)" in text
    assert "query refused" in text
    kinds = [
        (type(e).__name__, getattr(e, "outcome", None))
        for e in recorded(ledger)
        if isinstance(e, AnalyticsQuery | AnalyticsBudgetChange)
    ]
    assert kinds == [
        ("AnalyticsBudgetChange", None),
        ("AnalyticsBudgetChange", None),
        ("AnalyticsQuery", "released"),
        ("AnalyticsQuery", "released"),
        ("AnalyticsQuery", "refused"),
    ]
