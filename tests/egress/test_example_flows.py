"""The operators' example (docs/examples/flows.yaml) parses, and passes every load-time check
under the shipped policy pack: an example that the product refuses teaches the wrong thing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import bootstrap, ingest, sample_event, sample_user
from bastion.egress.model import parse_flows
from bastion.egress.wiring import open_egress
from bastion.events import Actor
from bastion.gateway.runtime import Runtime
from bastion.store import Database

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "flows.yaml"


@pytest.fixture
def rt(db: Database, tmp_path: Path, clock: FixedClock) -> Iterator[Runtime]:
    runtime = bootstrap(init_home(tmp_path / "home"), db, clock, publish_interval=0.05)
    ingest(runtime, "users", [sample_user(n) for n in range(1, 6)])
    ingest(runtime, "events", [sample_event(n, 1 + n % 5) for n in range(1, 11)])
    yield runtime
    runtime.close()


def test_the_example_flows_parse() -> None:
    flows = parse_flows(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert [f.name for f in flows] == [
        "video-stats-daily",
        "engagement-measurement",
        "engagement-by-region",
    ]
    assert {f.destination.type for f in flows} == {"files", "nats", "http"}


def test_the_example_flows_load_under_the_shipped_policy(rt: Runtime) -> None:
    egress = open_egress(rt.home, rt.db, rt.vault, rt.ledger, rt.clock)
    loaded = egress.loader.load(
        EXAMPLE.read_text(),
        source=str(EXAMPLE),
        actor=Actor(id="ops-lena", kind="operator"),
        reason="the documented example",
    )
    assert sorted(loaded.loaded) == [
        "engagement-by-region",
        "engagement-measurement",
        "video-stats-daily",
    ]
