"""OpenTelemetry spans on the request path: one per stage, and nothing protected in them.

The test plants its own person (an email, a name, a raw subject id), reads them (one read, a
batch, a search by subject), has a read of them denied, and requires every span the gateway
made to be free of those values, in names, attributes, events and status text alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext

from bastion.demo.platform import ingest, sample_user
from bastion.gateway import tracing
from bastion.gateway.client import Context, Filter, GatewayError
from bastion.gateway.runtime import Runtime

from .conftest import Connect, register_ticket

PLANTED_ID = "u31337"
PLANTED_EMAIL = "zoe.planted-trace@example.org"
PLANTED_NAME = "Zoe Plantedtrace"
PLANTED = (PLANTED_ID, PLANTED_EMAIL, PLANTED_NAME)
SUPPORT = Context(purpose="customer support", ticket="SUP-77")
STAGES = ("check", "decide", "plan", "record", "open", "transform", "respond")


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer with an in-memory exporter, for this test only (the global provider
    stays the no-op one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("bastion.gateway"))
    yield exporter
    provider.shutdown()


@pytest.fixture
def planted(runtime: Runtime) -> None:
    ingest(
        runtime,
        "users",
        [
            {
                **sample_user(31337),
                "user_id": PLANTED_ID,
                "email": PLANTED_EMAIL,
                "name": PLANTED_NAME,
            }
        ],
    )
    register_ticket(runtime, "SUP-77", [PLANTED_ID, "u00001"])


def texts(span: ReadableSpan) -> list[str]:
    """Everything a span would carry to a collector, as text."""
    out = [span.name, str(span.status.description or "")]
    out += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for event in span.events:
        out.append(event.name)
        out += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    return out


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.mark.usefixtures("planted")
def test_spans_name_each_stage_and_carry_nothing_protected(
    runtime: Runtime, connect: Connect, spans: InMemorySpanExporter
) -> None:
    alice = connect("alice")
    one = alice.read("users", PLANTED_ID, fields=["email", "name", "country"], context=SUPPORT)
    assert one.records[0].values["email"] == PLANTED_EMAIL  # the values did leave
    batch = alice.batch_read("users", [PLANTED_ID, "u00001"], fields=["email"], context=SUPPORT)
    assert len(batch.records) == 2
    found = alice.search(
        "users",
        filters=[Filter(field="subject", value=PLANTED_ID)],
        fields=["email", "name"],
        context=SUPPORT,
    )
    assert [r.values["name"] for r in found.records] == [PLANTED_NAME]
    with pytest.raises(GatewayError) as denied:
        alice.read("users", PLANTED_ID, fields=["email"], context=Context(purpose="curious"))
    assert denied.value.status == 403

    finished = spans.get_finished_spans()
    for span in finished:
        for text in texts(span):
            for value in PLANTED:
                assert value not in text, (span.name, text)

    releases = by_name(finished, tracing.RELEASE)
    assert len(releases) == 4
    assert [attrs(s).get("bastion.decision") for s in releases] == ["allow"] * 3 + [None]
    assert attrs(releases[-1])["bastion.error"] == "denied"
    assert all(attrs(s)["bastion.dataset"] == "users" for s in releases)
    assert {attrs(s)["bastion.action"] for s in releases} == {"read", "search"}
    # Each release that left ran every stage, in one trace under its HTTP request span.
    for stage in STAGES:
        assert len(by_name(finished, tracing.stage(stage))) >= 3, stage
    requests = by_name(finished, tracing.REQUEST)
    authenticated = by_name(finished, tracing.stage("authenticate"))
    assert len(requests) == 4 and len(authenticated) == 4
    request_ids = {s.context.span_id for s in requests}
    assert all(s.parent is not None and s.parent.span_id in request_ids for s in releases)
    assert {attrs(s)["http.route"] for s in requests} == {
        "/datasets/{dataset}/read",
        "/datasets/{dataset}/batch-read",
        "/datasets/{dataset}/search",
    }
    records = [attrs(s) for s in by_name(finished, tracing.stage("record"))]
    assert [a["bastion.ledger.index"] for a in records[:1]] == [one.receipt.index]
    # The denial: decided, recorded as a deny with its ledger index, and nothing opened.
    deny = [attrs(s) for s in by_name(finished, tracing.stage("decide"))][-1]
    assert deny["bastion.decision"] == "deny" and deny["bastion.error"] == "denied"
    assert deny["http.response.status_code"] == 403
    assert denied.value.receipt is not None
    assert deny["bastion.ledger.index"] == denied.value.receipt.index
    assert attrs(requests[-1])["http.response.status_code"] == 403


def test_an_unknown_dataset_name_never_reaches_a_span(
    runtime: Runtime, connect: Connect, spans: InMemorySpanExporter
) -> None:
    """A dataset the catalog does not declare is typed text (it could be anything)."""
    with pytest.raises(GatewayError) as err:
        connect("alice").read("users-" + PLANTED_NAME.replace(" ", "_"), "u00001")
    assert err.value.status in (404, 422)
    for span in spans.get_finished_spans():
        assert not any("Plantedtrace" in text for text in texts(span)), span.name


def test_a_span_refuses_attributes_outside_the_safe_set() -> None:
    span = NonRecordingSpan(SpanContext(0, 0, False))
    with pytest.raises(ValueError):
        tracing.attributes(span, record_id="u00001")
    with pytest.raises(ValueError):
        tracing.attributes(span, records="2")  # a count is an int, never text
    tracing.attributes(span, records=2, dataset="users", ledger_index=4)


@pytest.mark.usefixtures("planted")
def test_without_an_sdk_spans_are_no_ops(runtime: Runtime, connect: Connect) -> None:
    """The default: no exporter configured, the path works and records nothing extra."""
    out = connect("alice").read("users", "u00001", fields=["country"], context=SUPPORT)
    assert out.decision == "allow"
    with tracing.span(tracing.RELEASE) as span:
        assert not span.is_recording()
