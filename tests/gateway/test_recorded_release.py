"""The gateway opens values only through plans its own ledger entries are checked to list.

The vault's ``RecordedPlan.bind`` re-hashes the entry against its receipt and requires it to
list every (record, field) opened, in the compact bulk form the gateway writes. These tests
break the gateway's side on purpose (an entry that omits a record or a field, a denial, the
wrong entry for a receipt) and require that nothing is opened or released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bastion.events import AccessDecision, decode_event
from bastion.gateway import pipeline
from bastion.gateway.client import Context, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.vault import RecordedPlan

from .conftest import USERS, Connect, register_ticket

IDS = [f"u{n:05d}" for n in range(1, USERS + 1)]
SUPPORT = Context(
    purpose="customer support",
    ticket="SUP-9",  # names every subject of IDS (registered below)
    justification=Justification(type="customer_initiated_support", detail="bulk re-verification"),
)


@pytest.fixture(autouse=True)
def _ticket(runtime: Runtime) -> None:
    """SUP-9, as the ticketing service registered it."""
    register_ticket(runtime, "SUP-9", IDS)


class OpenSpy:
    """Counts vault.open calls and keeps the plans it was given."""

    def __init__(self, rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plans: list[RecordedPlan] = []
        original = rt.vault.open

        def spy(recorded: RecordedPlan, *stored: Any) -> Any:
            self.plans.append(recorded)
            return original(recorded, *stored)

        monkeypatch.setattr(rt.vault, "open", spy)


def test_each_chunk_opens_bound_to_the_entry_that_lists_it(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "ENTRY_BUDGET", 300)  # a few records per entry
    spy = OpenSpy(runtime, monkeypatch)
    out = connect("alice").batch_read("users", IDS, fields=["email", "phone"], context=SUPPORT)
    assert [r.values["email"] for r in out.records] == [
        f"person{n}@example.com" for n in range(1, USERS + 1)
    ]
    assert len(out.receipts) > 2 and len(spy.plans) == len(out.receipts)
    for recorded, receipt in zip(spy.plans, out.receipts, strict=True):
        assert recorded.receipts == (recorded.receipt,) and recorded.receipt.index == receipt.index
        event = decode_event(runtime.ledger.entry(receipt.index))
        assert isinstance(event, AccessDecision)
        listed = set(event.released_records or [])
        assert {i.record for i in recorded.plan.items} == listed  # exactly that chunk
        assert {i.field for i in recorded.plan.items} <= set(event.released_fields or {})


Mangle = Callable[[dict[str, Any]], dict[str, Any]]

BUGS: dict[str, Mangle] = {
    "entry-omits-a-record": lambda kw: {**kw, "released_records": kw["released_records"][:-1]},
    "entry-omits-a-field": lambda kw: {
        **kw,
        "released_fields": {f: t for f, t in kw["released_fields"].items() if f != "phone"},
    },
    "entry-withholds-a-field": lambda kw: {
        **kw,
        "released_fields": {**kw["released_fields"], "phone": "deny"},
    },
    "entry-records-a-denial": lambda kw: {**kw, "decision": "deny", "denied_reason": "no"},
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_an_entry_that_does_not_list_what_opens_releases_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch, bug: str
) -> None:
    real = AccessDecision

    def buggy(**kw: Any) -> AccessDecision:
        if kw.get("decision") == "allow" and kw.get("released_records"):
            kw = BUGS[bug](kw)
        return real(**kw)

    monkeypatch.setattr(pipeline, "AccessDecision", buggy)
    spy = OpenSpy(runtime, monkeypatch)
    with pytest.raises(GatewayError) as err:
        connect("alice").batch_read("users", IDS[:3], fields=["email", "phone"], context=SUPPORT)
    assert err.value.status == 500 and err.value.kind == "integrity-failure"
    assert spy.plans == []  # the vault was never asked
    assert "example.com" not in str(err.value) and "+1555" not in str(err.value)


def test_a_receipt_paired_with_another_entry_releases_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "ENTRY_BUDGET", 300)
    real = pipeline.record_entries

    def crossed(rt: Runtime, events: Any, **kw: Any) -> list[tuple[Any, bytes]]:
        recorded = real(rt, events, **kw)
        if len(recorded) >= 2:  # each receipt now travels with its neighbour's entry
            (r0, e0), (r1, e1), *rest = recorded
            recorded = [(r0, e1), (r1, e0), *rest]
        return recorded

    monkeypatch.setattr(pipeline, "record_entries", crossed)
    spy = OpenSpy(runtime, monkeypatch)
    with pytest.raises(GatewayError) as err:
        connect("alice").batch_read("users", IDS, fields=["email"], context=SUPPORT)
    assert err.value.status == 500 and err.value.kind == "integrity-failure"
    assert spy.plans == [] and "example.com" not in str(err.value)
