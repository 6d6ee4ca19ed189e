"""The one path end to end over HTTP: decide, record, open, transform, receipt."""

from __future__ import annotations

import pytest

from bastion.events import AccessDecision, decode_event
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.runtime import Runtime

from .conftest import Connect, register_ticket

# SUP-1 names u00001 (registered below): the subjects come from the ticket.
SUPPORT = Context(purpose="customer support", ticket="SUP-1")


@pytest.fixture(autouse=True)
def _ticket(runtime: Runtime) -> None:
    """SUP-1, as the ticketing service registered it."""
    register_ticket(runtime, "SUP-1", ["u00001"])


def test_staff_reads_with_purpose_and_ticket(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    out = alice.read("users", "u00001", fields=["email", "name", "country"], context=SUPPORT)
    assert out.decision == "allow"
    values = out.records[0].values
    assert values == {
        "email": "person1@example.com",
        "name": "Person Number1",
        "country": "US",
    }
    # The receipt names a real ledger entry that lists exactly what was released.
    event = decode_event(runtime.ledger.entry(out.receipt.index))
    assert isinstance(event, AccessDecision)
    assert event.decision == "allow" and event.actor.id == "alice"
    assert event.released_fields == {"email": "clear", "name": "clear", "country": "clear"}
    assert event.released_records == [out.records[0].record_id]
    # The purpose is typed text: the public entry carries its keyed commitment, the database
    # the text; the ticket id is a reference, in clear.
    assert event.purpose == runtime.public_text.commitment("customer support")
    assert runtime.public_text.stored(event.purpose) == "customer support"
    assert event.ticket == "SUP-1"
    assert event.actor.employer == "custodian" and event.actor.location_country == "US"
    assert event.subjects and all(s.startswith("hmac-sha256:") for s in event.subjects)
    assert "u00001" not in runtime.ledger.entry(out.receipt.index).decode()


def test_protected_without_ticket_is_denied_and_recorded(
    runtime: Runtime, connect: Connect
) -> None:
    alice = connect("alice")
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["email"], context=Context(purpose="curious"))
    assert err.value.status == 403 and err.value.receipt is not None
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert event.released_records is None or event.released_records == []


def test_ticket_row_filter_drops_other_subjects(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    out = alice.batch_read("users", ["u00001", "u00002"], fields=["email"], context=SUPPORT)
    assert [r.values["email"] for r in out.records] == ["person1@example.com"]
    assert len(out.missing) == 1
    event = decode_event(runtime.ledger.entry(out.receipt.index))
    assert isinstance(event, AccessDecision) and len(event.released_records or []) == 1


def test_engineer_abroad_gets_pseudonyms(runtime: Runtime, connect: Connect) -> None:
    kenji = connect("kenji")
    # kenji sees account ids only as pseudonyms, so he names a record by its token.
    token = runtime.vault.pseudonym_of("u00003")
    assert token is not None
    out = kenji.read(
        "users",
        token,
        fields=["user_id", "device_ids", "country", "language"],
        context=Context(purpose="debugging recommendations"),
    )
    values = out.records[0].values
    assert values["user_id"] == token and values["user_id"] != "u00003"
    assert all(d.startswith("ps_") for d in values["device_ids"])
    assert values["country"] == "US" and values["language"] == "en-US"
    # Protected fields are denied outright.
    plan = {p.field: p.transform for p in out.plan}
    assert plan["user_id"] == "pseudonym"
    with pytest.raises(GatewayError) as err:
        kenji.read("users", "u00003", fields=["email"], context=Context(purpose="x"))
    assert err.value.status == 403


def test_pseudonym_only_principal_cannot_address_raw_ids(
    runtime: Runtime, connect: Connect
) -> None:
    # The review's attack: batch-read u00000..u00009 by raw id and get each record's
    # pseudonym in request order, and learn from `missing` which accounts exist.
    kenji = connect("kenji")
    ids = [f"u{n:05d}" for n in range(0, 12)]
    ctx = Context(purpose="debugging recommendations")
    out = kenji.batch_read("users", ids, fields=["user_id", "country"], context=ctx)
    assert out.records == [] and out.missing == []
    # search with subject=<raw id> gives nothing either.
    from bastion.gateway.client import Filter

    found = kenji.search(
        "users", filters=[Filter(field="subject", value="u00003")], fields=["user_id"], context=ctx
    )
    assert found.records == [] and found.missing == []
    found = kenji.search(
        "users",
        filters=[Filter(field="record_id", value="u00003")],
        fields=["user_id"],
        context=ctx,
    )
    assert found.records == []
    # By the tokens he was given, he follows the same accounts.
    token = runtime.vault.pseudonym_of("u00003")
    assert token is not None
    by_token = kenji.search(
        "users", filters=[Filter(field="subject", value=token)], fields=["user_id"], context=ctx
    )
    assert [r.values["user_id"] for r in by_token.records] == [token]
    # A principal who sees the ids in clear still addresses them directly.
    alice = connect("alice")
    staff = alice.batch_read("users", ["u00001", "u99999"], fields=["user_id"], context=SUPPORT)
    assert [r.values["user_id"] for r in staff.records] == ["u00001"]
    assert staff.missing == ["u99999"]


def test_covered_person_is_denied_everything_protected(runtime: Runtime, connect: Connect) -> None:
    wei = connect("wei")
    with pytest.raises(GatewayError) as err:
        wei.read(
            "users",
            "u00001",
            fields=["email", "name"],
            context=Context(purpose="ops", ticket="SUP-9", ticket_subjects=["u00001"]),
        )
    assert err.value.status == 403
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert event.actor.employer_country == "CN"


def test_search_pages_by_subject_and_lists(runtime: Runtime, connect: Connect) -> None:
    from bastion.gateway.client import Filter

    kenji = connect("kenji")
    ctx = Context(purpose="analytics debugging")
    seen: list[str] = []
    token = None
    while True:
        page = kenji.search(
            "events", page_size=7, page_token=token, fields=["event_id", "user_id"], context=ctx
        )
        seen += [r.record_id for r in page.records]
        token = page.next_page_token
        if token is None:
            break
    assert len(seen) == 40 and len(set(seen)) == 40
    # kenji sees user ids as pseudonyms: he names the subject by its token.
    by_subject = kenji.search(
        "events",
        filters=[Filter(field="subject", value=runtime.vault.pseudonym_of("u00002") or "")],
        fields=["event_id"],
        context=ctx,
    )
    assert by_subject.records and len(by_subject.records) == 2


def test_metrics_and_health(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    alice.read("users", "u00001", fields=["email"], context=SUPPORT)
    text = connect().metrics()
    assert 'bastion_access_decisions_total{action="read",decision="allow"}' in text
    assert "u00001" not in text and "person1@example.com" not in text
    assert 'route="/datasets/{dataset}/read"' in text
    health = connect().health()
    assert health.status == "ok" and (health.log_size or 0) > 0
