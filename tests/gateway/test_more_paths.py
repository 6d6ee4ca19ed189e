"""Masking for moderators, exports, bulk thresholds (28 CFR 202.205) and the clean room."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import SensitiveCategory
from bastion.errors import ConfigError
from bastion.events import AccessDecision, AnalyticsQuery, Export, decode_event
from bastion.gateway.client import Context, Filter, GatewayError
from bastion.gateway.config import gateway_config
from bastion.gateway.runtime import Runtime
from bastion.home import settings_from
from bastion.policy import BulkCounter, BulkThresholds

from .conftest import Connect


def test_moderator_sees_identifiers_masked(runtime: Runtime, connect: Connect) -> None:
    mod = connect("mod")
    # A moderator follows accounts by pseudonym, so it names the record by its token.
    out = mod.read(
        "users",
        runtime.vault.pseudonym_of("u00007") or "",
        fields=["email", "phone", "name", "user_id", "language"],
        context=Context(purpose="abuse report R-1"),
    )
    v = out.records[0].values
    assert v["email"] == "***@example.com"
    assert v["phone"] == "***0007"
    assert v["name"] == "P. N."
    assert v["user_id"].startswith("ps_")
    assert v["language"] == "en-US"
    plan = {p.field: p.transform for p in out.plan}
    assert plan["email"] == "mask" and plan["user_id"] == "pseudonym"


def test_export_is_recorded_twice_over(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    out = alice.export(
        "events",
        destination="s3-custodian-bucket",
        fields=["event_id", "watch_time_s"],
        filters=[Filter(field="subject", value="u00003")],
        context=Context(purpose="quarterly retention review"),
    )
    assert len(out.records) == 2
    decision = decode_event(runtime.ledger.entry(out.receipt.index))
    export = decode_event(runtime.ledger.entry(out.receipt.index + 1))
    assert isinstance(decision, AccessDecision) and decision.action == "export"
    assert isinstance(export, Export) and export.records == 2
    # Where the caller said it goes is typed text: a keyed commitment in the public log.
    assert runtime.public_text.matches("s3-custodian-bucket", export.destination)
    assert runtime.public_text.stored(export.destination) == "s3-custodian-bucket"
    with pytest.raises(GatewayError) as err:
        alice.export("events", destination="x", limit=10**6, context=Context(purpose="all"))
    assert err.value.status == 422 and err.value.receipt is not None


def test_bulk_threshold_refuses_and_records(runtime: Runtime, connect: Connect) -> None:
    runtime.bulk = BulkCounter(
        runtime.db,
        runtime.clock,
        BulkThresholds(
            employer={SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS: 3},
            principal={SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS: 3},
        ),
    )
    kenji = connect("kenji")
    ctx = Context(purpose="dedupe accounts")

    def tok(user: str) -> str:  # kenji names accounts by their pseudonyms
        return runtime.vault.pseudonym_of(user) or ""

    kenji.batch_read("users", [tok("u00001"), tok("u00002")], fields=["user_id"], context=ctx)
    kenji.read("users", tok("u00001"), fields=["user_id"], context=ctx)  # already counted
    kenji.read("users", tok("u00003"), fields=["user_id"], context=ctx)
    with pytest.raises(GatewayError) as err:
        kenji.read("users", tok("u00004"), fields=["user_id"], context=ctx)
    assert err.value.status == 429 and err.value.kind == "bulk-threshold"
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert "202.205" in (event.denied_reason or "")
    # Fields of no sensitive category are not counted.
    out = kenji.read("users", tok("u00004"), fields=["language"], context=ctx)
    assert out.records[0].values == {"language": "en-US"}


def test_bulk_threshold_config() -> None:
    cfg = gateway_config(settings_from({"gateway": {"bulk_thresholds": {"health": 10}}}, {}))
    assert cfg.bulk_thresholds == {"health": 10}
    with pytest.raises(ConfigError, match="unknown category"):
        gateway_config(settings_from({"gateway": {"bulk_thresholds": {"shoes": 1}}}, {}))
    with pytest.raises(ConfigError, match="max_page_size"):
        gateway_config(settings_from({"gateway": {"max_page_size": 10**7}}, {}))


@pytest.fixture
def cleanroom_data(runtime: Runtime, tmp_path: Path) -> Path:
    """The clean room's snapshot, built from events in the runtime's vault."""
    from bastion.synth import SynthSpec
    from snapshot_from_vault import snapshot_from_synth

    spec = SynthSpec(seed=3, users=300, videos=40, events=4_000, campaigns=4)
    snapshot_from_synth(runtime, spec, tmp_path / "synth")
    return runtime.home.path / "cleanroom"


def test_cleanroom_queries_through_the_gateway(
    runtime: Runtime, connect: Connect, cleanroom_data: Path
) -> None:
    from bastion.events import Actor

    admin = Actor(id="pat", kind="operator")
    room = runtime.cleanroom()
    room.set_budget("analyst", "adco", epsilon=1.0, delta=1e-6, admin=admin, reason="test")
    room.set_budget(
        "organization", "adpartner", epsilon=5.0, delta=1e-6, admin=admin, reason="test"
    )
    adco = connect("adco")
    out = adco.cleanroom_query({"template": "count", "epsilon": 0.6, "group_by": ["age_band"]})
    assert out["rows"] and out["epsilon_spent"] == pytest.approx(0.6)
    event = decode_event(runtime.ledger.entry(out["receipt"]["index"]))
    assert isinstance(event, AnalyticsQuery) and event.analyst == "adco"
    with pytest.raises(GatewayError) as err:
        adco.cleanroom_query({"template": "count", "epsilon": 0.6})
    assert err.value.status == 403 and err.value.kind == "query-refused"
    with pytest.raises(GatewayError) as err:
        adco.cleanroom_query({"template": "select *", "epsilon": 0.1})
    assert err.value.status == 422 and err.value.receipt is not None
    # Row-level reads stay closed to the ad partner.
    with pytest.raises(GatewayError) as err:
        adco.read("events", "e00000001", fields=["event_type"], context=Context(purpose="ads"))
    assert err.value.status == 403
    # A covered person may not analyze either.
    with pytest.raises(GatewayError) as err:
        connect("wei").cleanroom_query({"template": "count", "epsilon": 0.1})
    assert err.value.status == 403 and err.value.receipt is not None


def test_large_release_spans_several_entries_in_one_commit(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.gateway import pipeline

    monkeypatch.setattr(pipeline, "ENTRY_BUDGET", 600)
    kenji = connect("kenji")
    out = kenji.search(
        "events", page_size=40, fields=["event_id", "user_id"], context=Context(purpose="qa")
    )
    assert len(out.records) == 40 and len(out.receipts) > 3
    indexes = [r.index for r in out.receipts]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))  # one commit, in order
    listed: list[str] = []
    for r in out.receipts:
        event = decode_event(runtime.ledger.entry(r.index))
        assert isinstance(event, AccessDecision) and event.request_id == out.request_id
        assert len(runtime.ledger.entry(r.index)) < 64 * 1024
        listed += event.released_records or []
    assert sorted(listed) == sorted(rec.record_id for rec in out.records)
    assert all(rec.values["user_id"].startswith("ps_") for rec in out.records)
