"""Flow declarations: bad input named by file, flow and field; the checks that refuse a flow;
flow-scoped tokens and the column transforms. Pure: no database."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pytest
import yaml

from bastion.catalog import SensitiveCategory, default_catalog
from bastion.clock import FixedClock
from bastion.egress.checks import BulkContext, review
from bastion.egress.model import Flow, FlowError, parse_flows
from bastion.egress.tokens import PREFIX, FlowTokens
from bastion.egress.transforms import build_table, output_schema, region_of
from bastion.policy import PolicyEngine
from bastion.policy.compiler import compile_policies, default_pack_text

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
KEY = base64.b64encode(bytes(range(1, 33))).decode()


def declaration(**over: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "name": "engagement-us",
        "version": 1,
        "kind": "records",
        "recipient": {
            "id": "us-measurement",
            "employer": "measure-co",
            "employer_country": "US",
            "location_country": "US",
            "public_key": KEY,
        },
        "source": {"dataset": "events"},
        "fields": {
            "user_id": "pseudonymize",
            "event_type": "keep",
            "ts": {"generalize": "hour"},
            "watch_time_s": {"truncate": 5},
        },
        "schedule": {"every": "6h"},
        "destination": {"type": "files", "path": "outbox"},
    }
    flow.update(over)
    return flow


def text(*flows: dict[str, Any]) -> str:
    return yaml.safe_dump({"flows": list(flows)})


def one(**over: Any) -> Flow:
    (flow,) = parse_flows(text(declaration(**over)), source="flows.yaml")
    return flow


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(
        compile_policies(default_pack_text()), default_catalog(), clock=FixedClock(NOW)
    )


def no_bulk(reach: int = 10) -> BulkContext:
    return BulkContext(reach=lambda _dataset: reach)


# --- bad input: a clear error naming file, flow and field ----------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"recipient": {**declaration()["recipient"], "public_key": "bm90IGEga2V5"}},
            "recipient.public_key",
            "32-byte",
        ),
        (
            {"recipient": {**declaration()["recipient"], "public_key": "***"}},
            "recipient.public_key",
            "base64",
        ),
        (
            {
                "recipient": {
                    k: v for k, v in declaration()["recipient"].items() if k != "public_key"
                }
            },
            "recipient.public_key",
            "required",
        ),
        ({"destination": {"type": "ftp", "path": "x"}}, "destination", "ftp"),
        (
            {"destination": {"type": "http", "url": "http://parent.example/in"}},
            "destination.url",
            "localhost",
        ),
        ({"schedule": {"every": "daily"}}, "schedule.every", "unit"),
        ({"schedule": {"every": "10s"}}, "schedule.every", "between"),
        ({"kind": "stream"}, "kind", "records"),
        ({"fields": {"user_id": "hash"}}, "fields", "a transform is"),
        ({"fields": {"ts": {"generalize": "week"}}}, "fields", "hour"),
        ({"colour": "blue"}, "colour", "Extra"),
        ({"version": 0}, "version", "greater"),
        ({"name": "Bad Name"}, "name", "pattern"),
    ],
)
def test_a_malformed_flow_is_refused_naming_file_flow_and_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(FlowError) as err:
        parse_flows(text(declaration(**change)), source="flows.yaml")
    message = str(err.value)
    assert "flows.yaml" in message
    assert err.value.field is not None and err.value.field.startswith(field.split(".")[0])
    assert words.lower() in message.lower()


def test_yaml_that_is_not_a_flow_file_is_refused() -> None:
    for bad in ("flows: [", "- just\n- a list\n", "flows: []\n"):
        with pytest.raises(FlowError, match=r"flows\.yaml"):
            parse_flows(bad, source="flows.yaml")


def test_a_filter_on_an_undeclared_field_and_a_flow_declared_twice_are_refused() -> None:
    filtered = declaration(
        source={
            "dataset": "events",
            "filter": [{"field": "region", "op": "eq", "value": "us-west"}],
        }
    )
    with pytest.raises(FlowError, match="filter reads only fields the flow declares"):
        parse_flows(text(filtered), source="flows.yaml")
    with pytest.raises(FlowError, match="declared twice"):
        parse_flows(text(declaration(), declaration()), source="flows.yaml")
    wrong = declaration(
        source={
            "dataset": "events",
            "filter": [{"field": "event_type", "op": "in", "value": "view"}],
        }
    )
    with pytest.raises(FlowError, match="takes a list"):
        parse_flows(text(wrong), source="flows.yaml")


# --- the checks ------------------------------------------------------------------------------


def codes(flow: Flow, engine: PolicyEngine, bulk: BulkContext | None = None) -> list[str]:
    return review(flow, default_catalog(), engine, bulk=bulk or no_bulk()).codes


def test_the_us_partners_pseudonymous_engagement_passes(engine: PolicyEngine) -> None:
    rv = review(one(), default_catalog(), engine, bulk=no_bulk())
    assert rv.ok, rv.refusals
    assert rv.categories == {SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS}
    assert "us-measurement-partner-receives-engagement" in rv.policies


def test_unknown_dataset_and_field_are_refusals(engine: PolicyEngine) -> None:
    assert codes(one(source={"dataset": "payments"}), engine) == ["dataset.unknown"]
    assert codes(one(fields={"user_id": "pseudonymize", "shoe_size": "keep"}), engine) == [
        "field.unknown"
    ]


def test_a_protected_field_is_refused_in_any_form(engine: PolicyEngine) -> None:
    for transform in ("keep", "pseudonymize", "drop", {"truncate": 3}):
        flow = one(source={"dataset": "users"}, fields={"email": transform, "region": "keep"})
        assert "field.protected" in codes(flow, engine)


def test_an_identifier_leaves_only_pseudonymized(engine: PolicyEngine) -> None:
    for transform in ("keep", {"truncate": 4}):
        flow = one(fields={"user_id": transform, "event_type": "keep"})
        assert "identifier.not-pseudonymized" in codes(flow, engine)
    assert codes(one(fields={"user_id": "drop", "event_type": "keep"}), engine) == []


def test_a_covered_recipient_gets_no_pseudonym_and_nothing_the_pack_does_not_name(
    engine: PolicyEngine,
) -> None:
    parent = {
        **declaration()["recipient"],
        "id": "parent-analytics",
        "employer": "parent-co",
        "employer_country": "CN",
        "location_country": "CN",
    }
    # Even pseudonymized, a user id is denied to a covered person (the guardrails).
    assert "recipient.denied" in codes(one(recipient=parent), engine)
    ok = one(recipient=parent, fields={"event_type": "keep", "region": "keep"})
    assert codes(ok, engine) == []
    # A recipient that claims another recipient's permit by name still needs the attributes:
    # the US partner's permit requires it not to be a covered person.
    posing = {**parent, "id": "us-measurement"}
    assert "recipient.denied" in codes(one(recipient=posing), engine)


def test_an_aggregate_without_bounds_or_public_groups_is_refused(engine: PolicyEngine) -> None:
    agg = {
        "group_by": ["region"],
        "sums": {"watch_time_s": [0, 600]},
        "epsilon_per_run": 1.0,
        "epsilon_budget": 10,
    }
    fields = {"region": "keep", "watch_time_s": "keep"}
    unbounded = one(kind="aggregate", aggregate=agg, fields=fields)
    assert "aggregate.bounds" in codes(unbounded, engine)
    private = one(
        kind="aggregate",
        fields={**fields, "campaign_id": "keep"},
        aggregate={**agg, "group_by": ["campaign_id"], "max_records_per_subject": 5},
    )
    assert "aggregate.group-not-public" in codes(private, engine)
    inverted = one(
        kind="aggregate",
        fields=fields,
        aggregate={**agg, "sums": {"watch_time_s": [600, 0]}, "max_records_per_subject": 5},
    )
    assert "aggregate.bounds" in codes(inverted, engine)


def test_an_aggregate_the_release_cannot_plan_is_refused_at_load(engine: PolicyEngine) -> None:
    agg = {
        "group_by": ["region"],
        "sums": {"watch_time_s": [0, 600]},
        "max_records_per_subject": 5,
        "epsilon_per_run": 1.0,
        "epsilon_budget": 10,
    }
    ok = one(kind="aggregate", aggregate=agg, fields={"region": "keep", "watch_time_s": "keep"})
    assert codes(ok, engine) == []
    cut = one(
        kind="aggregate", aggregate=agg, fields={"region": {"truncate": 3}, "watch_time_s": "keep"}
    )
    assert codes(cut, engine) == ["aggregate.plan"]


def test_the_bulk_estimate_refuses_a_flow_that_could_cross_the_threshold(
    engine: PolicyEngine,
) -> None:
    assert codes(one(), engine, no_bulk(reach=100_000)) == []
    assert codes(one(), engine, no_bulk(reach=100_001)) == ["bulk.threshold"]
    used = BulkContext(
        reach=lambda _d: 60_000,
        employer_usage={SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS: 40_001},
    )
    assert codes(one(), engine, used) == ["bulk.threshold"]
    # Without an identifier the flow carries no category, so nothing counts.
    plain = one(fields={"event_type": "keep", "watch_time_s": "keep"})
    assert codes(plain, engine, no_bulk(reach=10_000_000)) == []


def test_a_restricted_transaction_lifts_the_threshold_only_with_cisas_controls(
    engine: PolicyEngine,
) -> None:
    basis = {"basis": "CISA security requirements, agreement 2026-17"}
    generalized = one(restricted_transaction=basis)
    assert codes(generalized, engine, no_bulk(reach=10_000_000)) == []
    raw_time = one(
        restricted_transaction=basis,
        fields={"user_id": "pseudonymize", "ts": "keep", "event_type": "keep"},
    )
    assert "restricted.not-generalized" in codes(raw_time, engine, no_bulk(reach=10_000_000))
    joined = one(restricted_transaction=basis, joinable_with=["other-flow"])
    assert "restricted.joinable" in codes(joined, engine)


# --- tokens and transforms -------------------------------------------------------------------


def test_flow_tokens_differ_by_scope_and_never_equal_a_vault_token() -> None:
    a, b = FlowTokens(b"a" * 32), FlowTokens(b"b" * 32)
    vault_token = "ps_AAAAAAAAAAAAAAAAAAAA"
    assert a.token(vault_token) == a.token(vault_token)
    assert a.token(vault_token) != b.token(vault_token)
    assert a.token(vault_token).startswith(PREFIX) and a.token(vault_token) != vault_token
    assert a.row("e1") != a.token("e1")  # a row token is not a value token
    with pytest.raises(ValueError):
        FlowTokens(b"short")


def test_joinable_flows_share_a_scope_and_a_restricted_one_is_per_recipient() -> None:
    x = one(name="flow-a", joinable_with=["flow-b"])
    y = one(name="flow-b", joinable_with=["flow-a"])
    assert x.token_scope == y.token_scope == "flow-a"
    assert one(name="flow-c").token_scope == "flow-c"
    restricted = one(restricted_transaction={"basis": "x"})
    assert restricted.token_scope == "engagement-us@us-measurement"


def test_the_transforms_filter_generalize_and_truncate_by_column() -> None:
    flow = one(
        source={
            "dataset": "events",
            "filter": [{"field": "event_type", "op": "in", "value": ["view"]}],
        },
        fields={
            "user_id": "pseudonymize",
            "event_type": "keep",
            "ts": {"generalize": "hour"},
            "day": {"generalize": "month"},
            "watch_time_s": {"truncate": 5},
        },
    )
    ds = default_catalog().dataset("events")
    tokens = FlowTokens(b"k" * 32)
    columns = {
        "user_id": ["ps_1", "ps_2", "ps_1"],
        "event_type": ["view", "like", "view"],
        "ts": [
            datetime(2026, 1, 3, 10, 11, tzinfo=UTC),
            None,
            datetime(2026, 1, 4, 23, 59, tzinfo=UTC),
        ],
        "day": ["2026-01-03", "2026-01-03", "2026-02-01"],
        "watch_time_s": [12.5, 3.0, None],
    }
    schema = output_schema(flow, ds)
    table, kept = build_table(flow, ds, ["e1", "e2", "e3"], columns, tokens, schema)
    assert kept == [True, False, True]
    rows = table.to_pylist()
    assert [r["_row"] for r in rows] == [tokens.row("e1"), tokens.row("e3")]
    assert rows[0]["user_id"] == rows[1]["user_id"] == tokens.token("ps_1")
    assert rows[0]["ts"] == datetime(2026, 1, 3, 10, tzinfo=UTC)
    assert [r["day"] for r in rows] == ["2026-01", "2026-02"]
    assert [r["watch_time_s"] for r in rows] == [10.0, None]
    assert table.schema.field("day").type == pa.string()
    assert date(2026, 1, 3).isoformat() not in str(rows)


def test_a_location_generalizes_to_a_coarse_region() -> None:
    assert region_of("40.7128,-74.0060") == "us-northeast"
    assert region_of("34.0522,-118.2437") == "us-west"
    assert region_of("51.5074,-0.1278") == "uk"
    assert region_of("-33.8688,151.2093") == "other"
