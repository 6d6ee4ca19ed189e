"""The gateway's clean room applies the home's ``[cleanroom]`` settings, like the CLI does.

Before, ``Runtime.cleanroom`` built ``CleanRoom`` without its config, so on
``POST /cleanroom/queries`` (the partner's only path) ε above ``max_epsilon_per_query`` was
accepted and ``delta_per_query``, ``selection_share``, ``confidence`` and the response padding
``response_quantum_s`` were the defaults whatever the home said.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.cleanroom import BoundedAggregate, CleanRoomConfig, release
from bastion.cleanroom.snapshot import read_manifest
from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, bootstrap
from bastion.events import Actor, AnalyticsQuery, RequestRejected, decode_event
from bastion.gateway.app import create_app
from bastion.gateway.client import GatewayClient, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import CONFIG_NAME, Home
from bastion.store import Database
from snapshot_from_vault import snapshot_from_synth

SETTINGS = """
[cleanroom]
max_epsilon_per_query = 0.5
delta_per_query = 2e-7
selection_share = 0.5
confidence = 0.9
response_quantum_s = 0.25
"""


@pytest.fixture
def bare_runtime(db: Database, tmp_path: Path, clock: FixedClock) -> Iterator[Runtime]:
    """A gateway runtime on a home with the settings above, its clean room not yet opened,
    its snapshot built from the events in its vault."""
    from bastion.synth import SynthSpec

    home = init_home(tmp_path / "home")
    with open(home.path / CONFIG_NAME, "a") as fh:
        fh.write(SETTINGS)
    home = Home.load(home.path)
    rt = bootstrap(home, db, clock, publish_interval=0.05)
    spec = SynthSpec(seed=3, users=300, videos=40, events=4_000, campaigns=4)
    snapshot_from_synth(rt, spec, tmp_path / "synth")
    yield rt
    rt.close()


@pytest.fixture
def runtime(bare_runtime: Runtime) -> Runtime:
    rt = bare_runtime
    admin = Actor(id="pat", kind="operator")
    room = rt.cleanroom()
    room.set_budget("analyst", "adco", epsilon=5.0, delta=1e-5, admin=admin, reason="test")
    room.set_budget("organization", "adpartner", epsilon=5.0, delta=1e-5, admin=admin, reason="t")
    return rt


def _client(runtime: Runtime) -> Iterator[GatewayClient]:
    with ThreadedServer(create_app(runtime)) as srv:
        token = runtime.issuer.issue("adco", PRINCIPALS["adco"], ttl=timedelta(hours=1))
        client = GatewayClient(srv.url, token=token)
        yield client
        client.close()


@pytest.fixture
def adco(runtime: Runtime) -> Iterator[GatewayClient]:
    yield from _client(runtime)


def test_the_service_object_has_the_homes_settings(runtime: Runtime) -> None:
    config = runtime.cleanroom().config
    assert config == CleanRoomConfig.from_settings(runtime.home.settings)
    assert config.max_epsilon_per_query == 0.5
    assert config.response_quantum_s == 0.25


def test_epsilon_above_the_cap_is_refused_over_http(runtime: Runtime, adco: GatewayClient) -> None:
    with pytest.raises(GatewayError) as err:
        adco.cleanroom_query({"template": "count", "epsilon": 0.8})
    assert err.value.status == 422 and err.value.kind == "invalid-query"
    assert "at most 0.5" in str(err.value)
    assert err.value.receipt is not None
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))
    assert isinstance(event, RequestRejected) and event.error == "invalid-query"
    # Nothing was charged.
    spent = runtime.cleanroom().budgets.get("analyst", "adco")
    assert spent is not None and spent.epsilon_spent == 0


def test_delta_share_confidence_and_padding_apply_over_http(
    runtime: Runtime, adco: GatewayClient
) -> None:
    body = {
        "template": "sum",
        "epsilon": 0.5,
        "group_by": ["campaign_id"],  # private keys: DP partition selection spends δ
        "measure": "watch_time_s",
    }
    started = time.monotonic()
    out = adco.cleanroom_query(body)
    elapsed = time.monotonic() - started
    assert out["delta_spent"] == pytest.approx(2e-7)
    assert out["confidence"] == pytest.approx(0.9)
    event = decode_event(runtime.ledger.entry(out["receipt"]["index"]))
    assert isinstance(event, AnalyticsQuery) and event.delta_spent == pytest.approx(2e-7)
    # The mechanisms' noise scales are data-independent: they show the configured split of
    # ε between partition selection and the statistic (0.5, not the default 1/3).
    plan = runtime.cleanroom().plan(body)
    configured = release(plan, BoundedAggregate(), selection_share=0.5).mechanisms
    default = release(plan, BoundedAggregate(), selection_share=1 / 3).mechanisms
    assert configured != default
    assert out["mechanisms"] == configured
    # Padded to a multiple of 0.25 s: never answered sooner.
    assert elapsed >= 0.25


def test_a_stale_or_altered_snapshot_is_a_503_and_records_nothing(bare_runtime: Runtime) -> None:
    """The clean room answers only from a current, whole snapshot built from the vault; the
    partner learns that it is unavailable, and nothing is charged or recorded as a query."""
    rt = bare_runtime
    admin = Actor(id="pat", kind="operator")
    for scope, who in (("analyst", "adco"), ("organization", "adpartner")):
        rt.cleanroom().set_budget(scope, who, epsilon=5.0, delta=1e-5, admin=admin, reason="t")
    clock = rt.clock
    assert isinstance(clock, FixedClock)
    size = rt.ledger.size()
    limit = rt.home.settings.cleanroom.max_snapshot_age_seconds
    clock.advance(timedelta(seconds=limit + 1))
    for client in _client(rt):
        with pytest.raises(GatewayError) as err:
            client.cleanroom_query({"template": "count", "epsilon": 0.1})
        assert err.value.status == 503 and err.value.kind == "snapshot-unavailable"
        assert "old" in err.value.message
        rt.snapshot_builder().refresh()  # current again: answered
        client.cleanroom_query({"template": "count", "epsilon": 0.1})
        manifest = read_manifest(rt.home.path / "cleanroom")
        assert manifest is not None
        path = rt.home.path / "cleanroom" / manifest.file
        path.write_bytes(path.read_bytes()[:-8])  # torn: never served
        clock.advance(timedelta(seconds=1))
        rt.snapshot_builder().refresh()  # nothing changed in the vault: the same file
        with pytest.raises(GatewayError) as err:
            client.cleanroom_query({"template": "count", "epsilon": 0.1})
        assert err.value.status == 503 and err.value.kind == "snapshot-unavailable"
    queries = [decode_event(rt.ledger.entry(i)) for i in range(size, rt.ledger.size())]
    assert [q.outcome for q in queries if isinstance(q, AnalyticsQuery)] == ["released"]
