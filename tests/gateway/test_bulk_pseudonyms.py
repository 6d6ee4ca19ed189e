"""Bulk counting (28 CFR 202.205) covers pseudonymized identifiers on every release path.

28 CFR 202 counts data "regardless of whether it is anonymized, pseudonymized, de-identified
or encrypted": a field of a sensitive category counts whatever form it leaves in (pseudonym,
mask, clear), on reads, batch reads, searches and exports, with a grant or a break-glass
session; and an identifier the catalog pseudonymizes counts as covered personal identifiers
even where the catalog gives it no category.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

import pytest

from bastion.catalog import SensitiveCategory, parse_catalog
from bastion.events import AccessDecision, decode_event
from bastion.gateway.client import Context, Filter, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.policy import BulkCounter, BulkThresholds, PolicyRuntime

from .conftest import Connect, register_ticket

CPI = SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS
GEO = SensitiveCategory.PRECISE_GEOLOCATION
WHY = Justification(type="customer_initiated_support", detail="the user asked for help")


def limit(runtime: Runtime, limits: dict[SensitiveCategory, int]) -> BulkCounter:
    runtime.bulk = BulkCounter(
        runtime.db, runtime.clock, BulkThresholds(employer=limits, principal=limits)
    )
    return runtime.bulk


def tok(runtime: Runtime, user: str) -> str:
    """The record name of a principal that sees account ids only as pseudonyms."""
    token = runtime.vault.pseudonym_of(user)
    assert token is not None
    return token


def refused_by_bulk(runtime: Runtime, call: Callable[[], object]) -> AccessDecision:
    """The call is refused at the bulk threshold, and the refusal recorded as a denial."""
    with pytest.raises(GatewayError) as err:
        call()
    assert err.value.status == 429 and err.value.kind == "bulk-threshold", err.value
    assert err.value.receipt is not None
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert "202.205" in (event.denied_reason or "")
    return event


def test_pseudonym_only_releases_count_on_read_batch_and_search(
    runtime: Runtime, connect: Connect
) -> None:
    counter = limit(runtime, {CPI: 3})
    kenji = connect("kenji")  # sees account and device ids only as pseudonyms
    ctx = Context(purpose="dedupe accounts")
    out = kenji.batch_read(
        "users", [tok(runtime, "u00001"), tok(runtime, "u00002")], fields=["user_id"], context=ctx
    )
    assert all(r.values["user_id"].startswith("ps_") for r in out.records)
    assert {p.field: p.transform for p in out.plan} == {"user_id": "pseudonym"}
    out = kenji.search(
        "users",
        filters=[Filter(field="record_id", value=tok(runtime, "u00003"))],
        fields=["device_ids"],
        context=ctx,
    )
    assert len(out.records) == 1
    assert counter.usage("principal", "globalco/kenji") == {CPI: 3}
    refused_by_bulk(
        runtime,
        lambda: kenji.read("users", tok(runtime, "u00004"), fields=["user_id"], context=ctx),
    )
    # Events name their user by pseudonym too: the same count.
    refused_by_bulk(
        runtime,
        lambda: kenji.search(
            "events",
            filters=[Filter(field="subject", value=tok(runtime, "u00005"))],
            fields=["user_id"],
            context=ctx,
        ),
    )
    assert counter.usage("employer", "globalco") == {CPI: 3}


def test_clear_identifiers_count_on_export(runtime: Runtime, connect: Connect) -> None:
    counter = limit(runtime, {CPI: 2})
    alice = connect("alice")
    ctx = Context(purpose="account migration")
    out = alice.export(
        "users",
        destination="s3-custodian-bucket",
        filters=[Filter(field="subject", op="in", value=["u00001", "u00002"])],
        fields=["user_id", "language"],
        context=ctx,
    )
    assert len(out.records) == 2
    assert counter.usage("principal", "custodian/alice") == {CPI: 2}
    refused_by_bulk(
        runtime,
        lambda: alice.export(
            "users",
            destination="s3-custodian-bucket",
            filters=[Filter(field="subject", value="u00003")],
            fields=["user_id"],
            context=ctx,
        ),
    )


def test_masked_identifiers_count(runtime: Runtime, connect: Connect) -> None:
    limit(runtime, {CPI: 1})
    mod = connect("mod")
    ctx = Context(purpose="abuse report R-1")
    out = mod.read("users", tok(runtime, "u00001"), fields=["email"], context=ctx)
    assert out.records[0].values["email"] == "***@example.com"
    refused_by_bulk(
        runtime, lambda: mod.read("users", tok(runtime, "u00002"), fields=["email"], context=ctx)
    )


def test_releases_under_a_grant_or_break_glass_count(runtime: Runtime, connect: Connect) -> None:
    alice, sofia, omar = connect("alice"), connect("sofia"), connect("omar")
    register_ticket(runtime, "SUP-5", ["u00007"])
    ctx = Context(purpose="support", ticket="SUP-5", justification=WHY)
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00007", fields=["location"], context=ctx)
    rid = str(err.value.detail["access_request_id"])
    sofia.approve(rid, "checked")
    grant_id = omar.approve(rid, "agreed").grant_id
    assert grant_id is not None
    limit(runtime, {GEO: 0, CPI: 0})
    event = refused_by_bulk(
        runtime,
        lambda: alice.read(
            "users",
            "u00007",
            fields=["location"],
            context=ctx.model_copy(update={"grant_id": grant_id}),
        ),
    )
    assert event.grant_id == grant_id
    outage = Justification(type="break_glass", detail="payments outage")
    bg = alice.break_glass(
        "users", fields=["email"], subjects=["u00009"], justification=outage, duration_seconds=600
    )
    assert bg.grant is not None
    event = refused_by_bulk(
        runtime,
        lambda: alice.read(
            "users",
            "u00009",
            fields=["email"],
            context=Context(
                purpose="outage",
                justification=outage,
                ticket_subjects=["u00009"],
                grant_token=bg.grant["token"],  # type: ignore[index]
            ),
        ),
    )
    assert event.break_glass is True


def test_a_pseudonymized_identifier_counts_without_a_category(
    runtime: Runtime, connect: Connect
) -> None:
    """A catalog that pseudonymizes an identifier but names no category for it: its
    pseudonyms still count as covered personal identifiers, and are refused over the limit."""
    text = resources.files("bastion.catalog").joinpath("platform.yaml").read_text("utf-8")
    stripped = text.replace(
        "    category: covered_personal_identifiers\n        pseudonymize: true\n",
        "    pseudonymize: true\n",
    )
    assert stripped != text
    catalog = parse_catalog(stripped, "no-categories.yaml")
    users = catalog.dataset("users")
    assert users.field("user_id").category is None and users.field("user_id").pseudonymize
    runtime.policy = PolicyRuntime(runtime.policy_store, catalog)
    counter = limit(runtime, {CPI: 1})
    kenji = connect("kenji")
    ctx = Context(purpose="dedupe accounts")
    out = kenji.read("users", tok(runtime, "u00001"), fields=["user_id", "device_ids"], context=ctx)
    assert {p.field: p.transform for p in out.plan} == {
        "user_id": "pseudonym",
        "device_ids": "pseudonym",
    }
    assert counter.usage("principal", "globalco/kenji") == {CPI: 1}
    refused_by_bulk(
        runtime,
        lambda: kenji.read("users", tok(runtime, "u00002"), fields=["user_id"], context=ctx),
    )
