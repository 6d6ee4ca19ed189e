"""A data subject's rights through the gateway, on both backends: export, erasure, legal holds.

Every rule is tried against: another subject's export or erasure, operators without the
clearance, MFA or location a legal hold needs, a covered person, an erasure under a hold,
a cooling-off period not yet over, and a crash between the shred and its receipt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, sample_event, sample_user
from bastion.events import (
    AccessDecision,
    DeletionReceipt,
    LegalHoldChange,
    SubjectErasure,
    decode_event,
)
from bastion.gateway.app import create_app
from bastion.gateway.client import GatewayClient, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.gateway.subject_rights import EXPORT_FORMAT, SubjectRights
from bastion.ledger.note import NoteVerifier
from bastion.ledger.tlogproof import verify_proof
from bastion.settings import SubjectsSettings

from .conftest import USERS, Connect

ME = "u00004"
MY_EVENTS = [f"e{n:08d}" for n in range(1, 41) if 1 + n % USERS == 4]
HOLD_REASON = "litigation hold: Jane_Doe v. platform"


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime)


@pytest.fixture
def server(app: FastAPI) -> Iterator[ThreadedServer]:
    with ThreadedServer(app) as srv:
        yield srv


@pytest.fixture
def rights(app: FastAPI) -> SubjectRights:
    out: SubjectRights = app.state.subject_rights
    return out


def subject(connect: Connect, runtime: Runtime, subject_id: str = ME) -> GatewayClient:
    token = runtime.issuer.issue(subject_id, {"role": "subject"}, ttl=timedelta(minutes=30))
    return connect(token=token)


def officer(connect: Connect, name: str = "omar", **over: object) -> GatewayClient:
    """The demo's privacy officer, or one like omar with some attribute changed."""
    if not over:
        return connect(name)
    return connect(name, **{**PRINCIPALS["omar"], **over})


def entries(runtime: Runtime, start: int = 0) -> list[tuple[int, Any]]:
    size = runtime.ledger.size()
    return [(i, decode_event(runtime.ledger.entry(i))) for i in range(start, size)]


def refused(call: Any, status: int) -> GatewayError:
    with pytest.raises(GatewayError) as err:
        call()
    assert err.value.status == status, err.value
    return err.value


# ---- export ---------------------------------------------------------------------------


def test_a_subject_exports_every_record_in_clear_recorded_first(
    runtime: Runtime, connect: Connect
) -> None:
    me = subject(connect, runtime)
    start = runtime.ledger.size()
    doc = me.request("GET", f"/subjects/{ME}/export")
    assert doc["format"] == EXPORT_FORMAT and doc["version"] == 1 and doc["subject"] == ME
    assert doc["records"] == 1 + len(MY_EVENTS)
    users = doc["datasets"]["users"]
    (record,) = users["records"]
    expected = sample_user(4)
    assert record["record_id"] == ME
    assert record["values"]["email"] == expected["email"]
    assert record["values"]["name"] == expected["name"]
    assert record["values"]["user_id"] == ME
    events = doc["datasets"]["events"]["records"]
    assert sorted(r["record_id"] for r in events) == MY_EVENTS
    assert all(r["values"]["user_id"] == ME for r in events)
    assert {r["values"]["event_type"] for r in events} == {
        sample_event(int(k[1:]), 4)["event_type"] for k in MY_EVENTS
    }
    # The export names its own receipt: entries written before the response, listing every
    # record and field of the export, carrying no raw id and no value.
    receipt = doc["receipt"]
    assert receipt["index"] >= start
    recorded = [e for i, e in entries(runtime, start) if isinstance(e, AccessDecision)]
    assert [e.action for e in recorded] == ["subject_export"] * 2
    assert {e.dataset for e in recorded} == {"users", "events"}
    assert all(e.decision == "allow" for e in recorded)
    events_entry = next(e for e in recorded if e.dataset == "events")
    assert sorted(events_entry.released_records or []) == MY_EVENTS
    assert set(events_entry.released_fields or {}) == set(
        runtime.catalog.dataset("events").field_names
    )
    for i in range(start, runtime.ledger.size()):
        text = runtime.ledger.entry(i).decode()
        assert ME not in text and expected["email"] not in text and expected["name"] not in text
    # ...and the subject finds it, with its proof, in their access history.
    history = me.subject_accesses(ME)
    assert receipt["index"] in {a.index for a in history.entries}


def test_a_subject_cannot_export_someone_else(runtime: Runtime, connect: Connect) -> None:
    other = subject(connect, runtime, "u00005")
    start = runtime.ledger.size()
    err = refused(lambda: other.request("GET", f"/subjects/{ME}/export"), 403)
    assert err.receipt is not None
    (event,) = [e for _, e in entries(runtime, start)]
    assert isinstance(event, AccessDecision) and event.decision == "deny"
    assert event.action == "subject_export" and not event.released_records
    assert ME not in runtime.ledger.entry(err.receipt.index).decode()


@pytest.mark.parametrize(
    ("name", "over"),
    [
        ("alice", {}),  # an engineer of the custodian, cleared and in the US
        ("wei", {}),  # a covered person
        ("omar2", {"amr": ["pwd"]}),  # a privacy officer without MFA
        ("omar3", {"location_country": "SG"}),  # abroad
        ("omar4", {"clearance": "internal"}),  # not cleared
        ("audra", {}),  # an auditor sees accesses, not the data
    ],
)
def test_only_cleared_privacy_officers_export_for_others(
    runtime: Runtime, connect: Connect, name: str, over: dict[str, object]
) -> None:
    caller = officer(connect, name, **over) if over else connect(name)
    refused(lambda: caller.request("GET", f"/subjects/{ME}/export"), 403)
    doc = connect("omar").request("GET", f"/subjects/{ME}/export")
    assert doc["records"] == 1 + len(MY_EVENTS)


def test_nothing_opens_when_the_ledger_cannot_record(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real_open = runtime.vault.open
    monkeypatch.setattr(
        runtime.vault, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k)
    )
    me = subject(connect, runtime)

    def down(*_a: object, **_k: object) -> list[object]:
        raise OSError("ledger down")

    monkeypatch.setattr(runtime.ledger, "append_entries", down)
    refused(lambda: me.request("GET", f"/subjects/{ME}/export"), 503)
    assert opened == []


# ---- erasure --------------------------------------------------------------------------


def test_a_subject_is_erased_at_once_and_gets_a_receipt_with_its_proof(
    runtime: Runtime, connect: Connect
) -> None:
    me = subject(connect, runtime)
    out = me.request("POST", f"/subjects/{ME}/erasure-requests")
    request = out["request"]
    assert request["status"] == "executed"
    receipt = request["deletion_receipt"]
    event = decode_event(runtime.ledger.entry(receipt["index"]))
    assert isinstance(event, DeletionReceipt)
    assert event.subject_hash == runtime.vault.subject_hash(ME)
    assert event.records_affected == 1 + len(MY_EVENTS)
    assert request["id"] in event.reason
    # The proof verifies offline against the log's key.
    verified = verify_proof(
        out["proof"],
        runtime.ledger.entry(receipt["index"]),
        NoteVerifier.from_vkey(runtime.ledger.vkey),
    )
    assert verified.index == receipt["index"]
    # The subject is gone; fetching the request again gives the same receipt.
    assert runtime.vault.pseudonym_of(ME) is None
    again = me.request("GET", f"/subjects/{ME}/erasure-requests/{request['id']}")
    assert again["request"]["deletion_receipt"]["index"] == receipt["index"]
    assert again["proof"]
    # Asking again: already erased (410), recorded.
    refused(lambda: me.request("POST", f"/subjects/{ME}/erasure-requests"), 410)
    # The row no longer holds the raw id.
    rows = runtime.db.query("SELECT subject_id FROM subject_erasure_requests")
    assert rows == [(None,)]


def test_a_subject_cannot_erase_someone_else(runtime: Runtime, connect: Connect) -> None:
    other = subject(connect, runtime, "u00005")
    start = runtime.ledger.size()
    err = refused(lambda: other.request("POST", f"/subjects/{ME}/erasure-requests"), 403)
    assert err.receipt is not None
    (event,) = [e for _, e in entries(runtime, start)]
    assert isinstance(event, SubjectErasure) and event.step == "refused"
    assert runtime.vault.pseudonym_of(ME) is not None
    assert runtime.db.query("SELECT COUNT(*) FROM subject_erasure_requests") == [(0,)]
    # Nor read the status of someone else's request.
    mine = subject(connect, runtime).request("POST", f"/subjects/{ME}/erasure-requests")
    rid = mine["request"]["id"]
    refused(lambda: other.request("GET", f"/subjects/{ME}/erasure-requests/{rid}"), 403)
    refused(lambda: other.request("GET", f"/subjects/u00005/erasure-requests/{rid}"), 404)


def test_cooling_off_not_yet_over_keeps_the_request_pending(
    runtime: Runtime, connect: Connect, rights: SubjectRights, clock: FixedClock
) -> None:
    rights.settings = SubjectsSettings(erasure_cooling_off_seconds=3600)
    me = subject(connect, runtime)
    out = me.request("POST", f"/subjects/{ME}/erasure-requests")
    assert out["request"]["status"] == "pending" and "deletion_receipt" not in out["request"]
    # A second request returns the open one.
    assert (
        me.request("POST", f"/subjects/{ME}/erasure-requests")["request"]["id"]
        == (out["request"]["id"])
    )
    clock.advance(timedelta(seconds=3599))
    assert rights.process_due() == []
    assert runtime.vault.pseudonym_of(ME) is not None
    clock.advance(timedelta(seconds=1))
    (done,) = rights.process_due()
    assert done.status == "executed" and runtime.vault.pseudonym_of(ME) is None


def test_a_request_withdrawn_during_cooling_off_never_executes(
    runtime: Runtime, connect: Connect, rights: SubjectRights, clock: FixedClock
) -> None:
    rights.settings = SubjectsSettings(erasure_cooling_off_seconds=3600)
    me, other = subject(connect, runtime), subject(connect, runtime, "u00005")
    rid = me.request("POST", f"/subjects/{ME}/erasure-requests")["request"]["id"]
    path = f"/subjects/{ME}/erasure-requests/{rid}/withdraw"
    # Nobody else takes it back: not another subject, not through another subject's path.
    refused(lambda: other.request("POST", path), 403)
    refused(lambda: other.request("POST", f"/subjects/u00005/erasure-requests/{rid}/withdraw"), 404)
    start = runtime.ledger.size()
    out = me.request("POST", path)
    assert out["request"]["status"] == "withdrawn"
    (event,) = [e for _, e in entries(runtime, start)]
    assert isinstance(event, SubjectErasure) and event.step == "withdrawn"
    assert ME not in runtime.ledger.entry(runtime.ledger.size() - 1).decode()
    # The raw id the request kept for its execution is gone with it.
    (kept,) = runtime.db.query(
        "SELECT subject_id FROM subject_erasure_requests WHERE id = ?", (rid,)
    )
    assert kept[0] == ""
    clock.advance(timedelta(days=2))
    assert rights.process_due() == []
    assert runtime.vault.pseudonym_of(ME) is not None
    me = subject(connect, runtime)  # a fresh token, two days on
    refused(lambda: me.request("POST", path), 409)  # withdrawn once
    # A new request may be opened afterwards, and once executed it cannot be withdrawn.
    rights.settings = SubjectsSettings(erasure_cooling_off_seconds=0)
    again = me.request("POST", f"/subjects/{ME}/erasure-requests")["request"]
    assert again["id"] != rid and again["status"] == "executed"
    refused(
        lambda: me.request("POST", f"/subjects/{ME}/erasure-requests/{again['id']}/withdraw"), 409
    )


def test_an_erasure_under_a_legal_hold_waits_until_it_is_released(
    runtime: Runtime, connect: Connect, rights: SubjectRights, clock: FixedClock
) -> None:
    omar, me = connect("omar"), subject(connect, runtime)
    hold = omar.request("POST", f"/subjects/{ME}/legal-holds", json={"reason": HOLD_REASON})
    hold_id = hold["hold"]["id"]
    assert hold["hold"]["active"]
    start = runtime.ledger.size()
    out = me.request("POST", f"/subjects/{ME}/erasure-requests")
    request = out["request"]
    assert request["status"] == "held" and request["held"]
    (event,) = [e for _, e in entries(runtime, start)]
    assert isinstance(event, SubjectErasure) and event.step == "requested" and event.held
    clock.advance(timedelta(days=30))
    assert rights.process_due() == []
    assert runtime.vault.pseudonym_of(ME) is not None  # nothing shredded under the hold
    omar, me = connect("omar"), subject(connect, runtime)  # fresh tokens, 30 days on
    listed = omar.request("GET", "/legal-holds", params={"subject": ME})
    assert [h["id"] for h in listed["holds"]] == [hold_id]
    released = omar.request(
        "POST", f"/legal-holds/{hold_id}/release", json={"reason": "case closed"}
    )
    assert not released["hold"]["active"]
    # Releasing let the erasure run.
    status = me.request("GET", f"/subjects/{ME}/erasure-requests/{request['id']}")
    assert status["request"]["status"] == "executed"
    assert runtime.vault.pseudonym_of(ME) is None
    refused(
        lambda: omar.request("POST", f"/legal-holds/{hold_id}/release", json={"reason": "x"}), 409
    )
    # The public log has the hold steps, with the typed reason only as a commitment.
    steps = [e.step for _, e in entries(runtime) if isinstance(e, LegalHoldChange)]
    assert steps == ["placed", "listed", "released"]
    for i in range(runtime.ledger.size()):
        text = runtime.ledger.entry(i).decode()
        assert "Jane_Doe" not in text and ME not in text


@pytest.mark.parametrize(
    ("name", "over"),
    [
        ("alice", {}),
        ("wei", {}),
        ("sofia", {}),  # a security officer is not a privacy officer
        ("omar2", {"amr": ["pwd"]}),
        ("omar3", {"location_country": "SG"}),
        ("omar4", {"clearance": "internal"}),
        ("omar5", {"employer": "parentco", "employer_country": "CN"}),  # covered
    ],
)
def test_only_cleared_privacy_officers_place_holds(
    runtime: Runtime, connect: Connect, name: str, over: dict[str, object]
) -> None:
    caller = officer(connect, name, **over) if over else connect(name)
    start = runtime.ledger.size()
    err = refused(
        lambda: caller.request("POST", f"/subjects/{ME}/legal-holds", json={"reason": "r"}), 403
    )
    assert err.receipt is not None
    (event,) = [e for _, e in entries(runtime, start)]
    assert isinstance(event, LegalHoldChange) and event.step == "refused"
    refused(lambda: caller.request("GET", "/legal-holds"), 403)
    assert runtime.db.query("SELECT COUNT(*) FROM subject_legal_holds") == [(0,)]


def test_a_subject_cannot_lift_or_place_a_hold(runtime: Runtime, connect: Connect) -> None:
    hold = connect("omar").request("POST", f"/subjects/{ME}/legal-holds", json={"reason": "r"})
    me = subject(connect, runtime)
    refused(lambda: me.request("POST", f"/subjects/{ME}/legal-holds", json={"reason": "r"}), 403)
    refused(
        lambda: me.request(
            "POST", f"/legal-holds/{hold['hold']['id']}/release", json={"reason": "r"}
        ),
        403,
    )


def test_a_crash_between_shred_and_receipt_is_finished_once(
    runtime: Runtime,
    connect: Connect,
    rights: SubjectRights,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rights.settings = SubjectsSettings(erasure_cooling_off_seconds=60)
    me = subject(connect, runtime)
    rid = me.request("POST", f"/subjects/{ME}/erasure-requests")["request"]["id"]
    clock.advance(timedelta(seconds=61))
    real_append = runtime.ledger.append_entries

    def crash(entries_: list[bytes], **kw: object) -> object:
        if b'"deletion.receipt"' in entries_[0]:
            raise OSError("power cut after the shred")
        return real_append(entries_, **kw)

    monkeypatch.setattr(runtime.ledger, "append_entries", crash)
    assert rights.process_due() == []  # the round failed after the shred
    assert runtime.vault.pseudonym_of(ME) is None
    status = me.request("GET", f"/subjects/{ME}/erasure-requests/{rid}")["request"]
    assert status["status"] == "executing"
    # What a second executor read while the first was still at it.
    stale = runtime.db.query(
        "SELECT id, subject_hash, subject_id, status, requested_at, due_at, request_index, "
        "preview, log_size, receipt_entry, receipt_index, executed_at "
        "FROM subject_erasure_requests WHERE id = ?",
        (rid,),
    )[0]
    monkeypatch.setattr(runtime.ledger, "append_entries", real_append)
    (done,) = rights.process_due()
    assert done.status == "executed" and done.receipt_index is not None
    receipts = [e for _, e in entries(runtime) if isinstance(e, DeletionReceipt)]
    assert len(receipts) == 1
    # The receipt says what the shred did (saved before it), not "nothing".
    assert receipts[0].records_affected == 1 + len(MY_EVENTS)
    assert receipts[0].key_id.startswith("subject-dek:") and receipts[0].pseudonyms_removed >= 1
    # Running again (a second executor, a restart) appends nothing more.
    assert rights.process_due() == []
    rights._execute(stale)  # the second executor carries on: no second receipt
    assert len([e for _, e in entries(runtime) if isinstance(e, DeletionReceipt)]) == 1


def test_an_unknown_subject_cannot_be_erased(runtime: Runtime, connect: Connect) -> None:
    omar = connect("omar")
    refused(lambda: omar.request("POST", "/subjects/u99999/erasure-requests"), 404)
    doc = omar.request("GET", "/subjects/u99999/export")
    assert doc["records"] == 0 and doc["datasets"] == {}
    assert json.dumps(doc)  # still a complete document, with its receipt
    assert doc["receipt"]["index"] >= 0


def test_erasure_steps_show_in_the_subjects_own_history_and_holds_do_not(
    runtime: Runtime, connect: Connect, rights: SubjectRights
) -> None:
    rights.settings = SubjectsSettings(erasure_cooling_off_seconds=3600)
    omar, me = connect("omar"), subject(connect, runtime)
    omar.request("POST", f"/subjects/{ME}/legal-holds", json={"reason": HOLD_REASON})
    rid = me.request("POST", f"/subjects/{ME}/erasure-requests")["request"]["id"]
    me.request("POST", f"/subjects/{ME}/erasure-requests/{rid}/withdraw")
    # Another subject trying to erase me is in my history too.
    refused(
        lambda: subject(connect, runtime, "u00005").request(
            "POST", f"/subjects/{ME}/erasure-requests"
        ),
        403,
    )
    history = me.subject_accesses(ME)
    steps = [e.event["step"] for e in history.entries if e.event["type"] == "subject.erasure"]
    assert sorted(steps) == ["refused", "requested", "withdrawn"]
    assert not [e for e in history.entries if e.event["type"] == "legal.hold"]
    # Another subject's history holds none of it.
    theirs = subject(connect, runtime, "u00005").subject_accesses("u00005")
    assert not [e for e in theirs.entries if e.event["type"] == "subject.erasure"]
