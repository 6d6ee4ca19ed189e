"""The transparency log is public (its tiles are served to anyone at /log/), so no entry may
carry a raw data-subject id or a protected value.

One scenario drives every kind of entry the gateway and the approval workflow write: reads,
batch reads, searches and exports by subject, denials (policy, covered person, row filter,
bulk page), approval requests, self-approval and non-approver refusals, approvals, grants,
grant use and replay, revocation, break-glass with its review, expiry, a data subject
reading their own history and being refused others', a subject principal trying to read
data, refused tokens whose claims name a subject or carry an email, and bad input that
quotes a subject id. Then every entry's bytes are scanned for every raw id and value.

The text principals type (purposes, justification details, approvers', deniers' and revokers'
reasons, review notes, an administrator's reason for loading a policy set, also when refused)
names a person in this scenario; by default (``free_text = "commit"``)
no entry carries it, only keyed commitments that the database's texts reproduce, and with
``free_text = "publish"`` the entries carry it verbatim.

So do the names, references and ids a caller types: an email or a name as a dataset in the
path (404), as a field or a body key (422), as an export destination, as a ticket (a raw
subject id too), as a grant id and as ``X-Request-Id``. By default the log carries commitments
of them (a client request id is replaced unless it is a UUID or hex); published, as sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import bootstrap, ingest, sample_event, sample_user
from bastion.events import (
    AccessDecision,
    Approval,
    AuthFailure,
    Export,
    PolicyChange,
    RequestRejected,
    decode_event,
)
from bastion.gateway.auth import TokenIssuer
from bastion.gateway.client import Context, Filter, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import ENV_FREE_TEXT
from bastion.policy import text_commitment, text_key
from bastion.store import Database

from .conftest import USERS, Connect, register_ticket

# A person the typed text names (not a data subject of the vault): it must never reach the
# public log unless the custodian publishes free text. "Jane_Doe" is the name where a pattern
# forbids spaces (a ticket, a request id, a dataset in a path).
EMAIL = "jane.doe@example.com"
NAME_ID = "Jane_Doe"
PLANTED = (EMAIL, "Jane Doe", NAME_ID)
RAW_TICKET = "u00015"  # a raw subject id given as a ticket
RAW_REQUEST_ID = "u00016-u00017"  # raw subject ids given as a request id
CLIENT_UUID = "0b9f6c1e-3d2a-4f5b-8c7d-6e5f4a3b2c1d"  # a request id that is only an id
# What the scenario types as names, destinations, tickets and ids: each is in the log only as
# a commitment (the text kept in the database), unless the custodian publishes free text.
TYPED_NAMES = (
    EMAIL,
    NAME_ID,
    "Jane Doe",
    "jane.doe.example.com",
    f"context.{EMAIL}",
    f"s3://exports/{NAME_ID}",
    RAW_TICKET,
)
WHY = Justification(
    type="customer_initiated_support",
    detail="the user asked for help, see jane.doe@example.com",
)
PURPOSE = "support call from Jane Doe"
APPROVAL = "ticket checked with Jane Doe"
REVOCATION = "ticket closed by jane.doe@example.com"
DENIAL = "not needed, Jane Doe withdrew"
OUTAGE = "payments outage INC-9, Jane Doe's account locked"
NOTES = "INC-9 confirmed by jane.doe@example.com"
POLICY_REASON = "stricter exports after Jane Doe's complaint (jane.doe@example.com)"
NOBODY = "u99999"  # named in a request, but not in the vault
COMMITMENT = re.compile(rb"hmac-sha256:[0-9a-f]{64}")


@pytest.fixture
def free_text() -> str:
    return "commit"


@pytest.fixture
def runtime(
    db: Database,
    tmp_path: Path,
    clock: FixedClock,
    free_text: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    """The gateway's runtime, with the home's free_text set through its environment override."""
    monkeypatch.setenv(ENV_FREE_TEXT, free_text)
    home = init_home(tmp_path / "home")
    assert home.settings.free_text == free_text
    rt = bootstrap(home, db, clock, publish_interval=0.05)
    ingest(rt, "users", [sample_user(n) for n in range(1, USERS + 1)])
    ingest(rt, "events", [sample_event(n, 1 + n % USERS) for n in range(1, 41)])
    yield rt
    rt.close()


def _ctx(*subjects: str, **over: Any) -> Context:
    fields: dict[str, Any] = {
        "purpose": PURPOSE,
        "ticket": "SUP-31",
        "ticket_subjects": list(subjects),
        "justification": WHY,
    }
    return Context(**{**fields, **over})


def _raw_values() -> dict[str, list[bytes]]:
    """Every raw subject id and protected or identifying value the scenario's subjects have."""
    out: dict[str, list[bytes]] = {}
    for n in range(1, USERS + 1):
        u = sample_user(n)
        values = [u["user_id"], u["email"], u["phone"], u["name"], *u["device_ids"]]
        out[u["user_id"]] = [v.encode() for v in values]
    out[NOBODY] = [NOBODY.encode()]
    return out


def _refused(call: Any) -> GatewayError:
    with pytest.raises(GatewayError) as err:
        call()
    assert err.value.receipt is not None  # every refusal is recorded
    return err.value


def _scenario(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    # SUP-31, as the ticketing service registered it: the subjects the reads name.
    register_ticket(runtime, "SUP-31", [f"u{n:05d}" for n in range(1, USERS + 1)])
    alice, kenji, wei = connect("alice"), connect("kenji"), connect("wei")
    sofia, omar, audra = connect("sofia"), connect("omar"), connect("audra")

    # Reads, batch reads, search and export by subject.
    alice.read("users", "u00001", fields=["email", "phone", "name"], context=_ctx("u00001"))
    alice.batch_read(
        "users", ["u00001", "u00002", NOBODY], fields=["email"], context=_ctx("u00001")
    )
    alice.search(
        "users",
        filters=[Filter(field="subject", value="u00003")],
        fields=["email"],
        context=_ctx("u00003"),
    )
    alice.search(
        "events",
        filters=[Filter(field="subject", value="u00003")],
        fields=["device_id"],
        context=_ctx("u00003"),
    )
    alice.export(
        "events",
        destination="s3://custodian-exports/sup-31",
        filters=[Filter(field="subject", value="u00004")],
        fields=["event_id", "watch_time_s", "user_id", "device_id"],
        context=_ctx("u00004"),
    )
    # Exporting protected fields needs approvers: refused, and an access request opened.
    _refused(
        lambda: alice.export(
            "users",
            destination="s3://custodian-exports/sup-31",
            limit=5,
            filters=[Filter(field="subject", value="u00004")],
            fields=["email", "phone"],
            context=_ctx("u00004"),
        )
    )
    kenji.read("users", "u00002", fields=["user_id", "device_ids"], context=Context(purpose="qa"))

    # Denials: policy, covered person, bad input quoting a subject id.
    _refused(lambda: kenji.read("users", "u00002", fields=["email"], context=Context(purpose="x")))
    _refused(lambda: wei.read("users", "u00005", fields=["email", "name"], context=_ctx("u00005")))
    _refused(lambda: alice.read("users", "u00005", fields=["shoe_size"], context=_ctx("u00005")))
    _refused(
        lambda: alice.search(
            "users",
            filters=[Filter(field="subject", op="in", value='u00006"; DROP TABLE x; --')],
            fields=["email"],
            context=_ctx("u00006"),
        )
    )

    _typed_names(runtime, connect)

    # Two-person approval: opened by a read, refused self-approval and non-approver, granted,
    # used, replayed, revoked.
    err = _refused(
        lambda: alice.read("users", "u00007", fields=["location"], context=_ctx("u00007"))
    )
    rid = str(err.detail["access_request_id"])
    _refused(lambda: alice.approve(rid, "me"))
    _refused(lambda: kenji.approve(rid, "fine"))
    sofia.approve(rid, APPROVAL)
    grant_id = omar.approve(rid, "agree").grant_id
    assert grant_id is not None
    with_grant = _ctx("u00007", grant_id=grant_id)
    used = alice.read("users", "u00007", fields=["location"], context=with_grant)
    _refused(
        lambda: alice.read(
            "users", "u00007", fields=["location"], context=with_grant, request_id=used.request_id
        )
    )
    sofia.revoke(grant_id, REVOCATION)
    # A request naming several subjects (one unknown), denied.
    denied = alice.request_access(
        "users",
        fields=["location"],
        subjects=["u00008", NOBODY],
        justification=WHY,
        ticket="SUP-32",
        purpose="investigation",
    )
    sofia.deny(denied.request["request_id"], DENIAL)

    # Break-glass, its use and its review.
    outage = Justification(type="break_glass", detail=OUTAGE)
    bg = alice.break_glass(
        "users",
        fields=["email", "phone"],
        subjects=["u00009"],
        justification=outage,
        duration_seconds=600,
    )
    assert bg.grant is not None and bg.review_id is not None
    alice.read(
        "users",
        "u00009",
        fields=["email"],
        context=Context(
            purpose="INC-9",
            justification=outage,
            ticket_subjects=["u00009"],
            grant_token=bg.grant["token"],
        ),
    )
    _refused(lambda: alice.review(bg.review_id or "", "justified", "my own"))
    sofia.review(bg.review_id, "justified", NOTES)

    # A policy load: refused for a non-administrator, then done by one; same typed reason.
    pat = connect("pat")
    text = pat.policy()["text"] + "\n// stricter exports\n"
    _refused(lambda: alice.load_policy(text, POLICY_REASON))
    assert pat.load_policy(text, POLICY_REASON)["changed"] is True

    # Data subjects: their own history, someone else's, and trying to read data.
    me = connect(token=runtime.issuer.issue("u00007", {"role": "subject"}))
    history = me.subject_accesses("u00007")
    steps = {e.event.get("step") for e in history.entries if e.event.get("type") == "approval"}
    # The subject still finds the approval workflow on their data, through the refs.
    assert {"requested", "approved", "granted", "revoked"} <= steps
    assert any(
        e.event.get("dataset") == "users" and e.event["actor"]["id"] == "alice"
        for e in history.entries
    )
    _refused(lambda: me.subject_accesses("u00001"))
    _refused(lambda: me.read("users", "u00007", fields=["email"], context=Context(purpose="me")))
    assert audra.subject_accesses("u00009").entries

    # Refused tokens whose claims name a subject, an email, or an untrusted issuer.
    forger = TokenIssuer(
        Ed25519PrivateKey.generate(),
        issuer=runtime.issuer.issuer,
        audience=runtime.issuer.audience,
        clock=clock,
    )
    stranger = TokenIssuer(
        Ed25519PrivateKey.generate(),
        issuer="https://evil.example/u00011",
        audience=runtime.issuer.audience,
        clock=clock,
    )
    for token in (
        forger.issue("u00010", {"role": "subject"}),
        stranger.issue("person12@example.com", {"role": "subject"}),
    ):
        _refused(lambda token=token: connect(token=token).subject_accesses("u00010"))
    expiring = runtime.issuer.issue("u00013", {"role": "subject"}, ttl=timedelta(minutes=1))
    clock.advance(timedelta(hours=9))  # the subject's token and the grants run out
    _refused(lambda: connect(token=expiring).subject_accesses("u00013"))
    # A malformed body with a subject's token, straight over HTTP.
    r = httpx.post(
        f"{server.url}/datasets/users/read",
        content=b'{"record_id": "u00014", ',
        headers={
            "Authorization": f"Bearer {runtime.issuer.issue('u00014', {'role': 'subject'})}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 400
    assert runtime.approvals.expire_due()


def _typed_names(runtime: Runtime, connect: Connect) -> None:
    """Names, references and ids a caller types, each planted with a person in it."""
    alice, kenji = connect("alice"), connect("kenji")
    publish = runtime.public_text.mode == "publish"
    # An email or a name as a dataset in the path (404), also with a body that fails
    # validation, and as the dataset of an explanation and of an access request.
    for dataset in (EMAIL, NAME_ID):
        _refused(lambda d=dataset: alice.read(d, "u00001", fields=["email"], context=_ctx()))
        _refused(lambda d=dataset: alice.request("POST", f"/datasets/{d}/read", json={}))
    _refused(lambda: alice.request("POST", "/policy/explain", json={"dataset": "Jane Doe"}))
    _refused(
        lambda: alice.request_access(
            "jane.doe.example.com", fields=["email"], justification=WHY, ticket="SUP-31"
        )
    )
    # An email or a name as a field name (422): read, access request, and a body key the
    # schema does not know.
    for name in (EMAIL, "Jane Doe"):
        _refused(lambda n=name: alice.read("users", "u00001", fields=[n], context=_ctx()))
    _refused(lambda: alice.request_access("users", fields=["Jane Doe"], justification=WHY))
    _refused(
        lambda: alice.request(
            "POST",
            "/datasets/users/read",
            json={"record_id": "u00001", "context": {"purpose": "x", EMAIL: 1}},
        )
    )
    # An email or a name as an export destination.
    for destination in (EMAIL, f"s3://exports/{NAME_ID}"):
        alice.export(
            "events",
            destination=destination,
            filters=[Filter(field="subject", value="u00004")],
            fields=["event_id"],
            context=_ctx("u00004"),
        )
    # A name and a raw subject id as a ticket, on an allowed read and on a denial.
    for ticket in (NAME_ID, RAW_TICKET):
        alice.read("users", "u00001", fields=["language"], context=_ctx("u00001", ticket=ticket))
        _refused(
            lambda t=ticket: kenji.read(
                "users", "u00002", fields=["email"], context=Context(purpose="x", ticket=t)
            )
        )
    # An email as a grant id.
    _refused(
        lambda: alice.read(
            "users", "u00001", fields=["location"], context=_ctx("u00001", grant_id=EMAIL)
        )
    )
    # A name, an email-like and a subject-id-like X-Request-Id; and one that is only an id.
    # (Publishing free text keeps the looser pattern of old: these are kept then.)
    for rid in (NAME_ID, "jane.doe.example.com", RAW_REQUEST_ID):
        out = alice.read("users", "u00001", fields=["language"], context=_ctx(), request_id=rid)
        assert (out.request_id == rid) is publish
        err = _refused(
            lambda r=rid: alice.read("nowhere", "u1", fields=["x"], context=_ctx(), request_id=r)
        )
        assert (err.request_id == rid) is publish
    out = alice.read("users", "u00001", fields=["language"], context=_ctx(), request_id=CLIENT_UUID)
    assert out.request_id == CLIENT_UUID


def test_no_entry_carries_a_raw_subject_id_or_protected_value(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    size = int(runtime.ledger.size())
    entries = [bytes(runtime.ledger.entry(i)) for i in range(start, size)]
    assert len(entries) > 30
    kinds = {decode_event(e).type for e in entries}
    assert {"access.decision", "approval", "export", "request.rejected", "auth.failure"} <= kinds
    leaks = [
        (start + i, subject, value.decode())
        for i, entry in enumerate(entries)
        for subject, values in _raw_values().items()
        for value in values
        if value in entry
    ]
    assert leaks == []


def test_refs_replace_ids_where_ids_used_to_be(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    """The same entries still say who and whom, by keyed ref: the subject's ref is the one
    their accesses are listed under, and refused tokens are named by ref."""
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    events = [decode_event(runtime.ledger.entry(i)) for i in range(start, runtime.ledger.size())]
    ref7 = runtime.subject_ref_for_id("u00007")
    assert ref7 is not None
    approvals = [e for e in events if isinstance(e, Approval) and e.subject_refs]
    assert approvals and all(e.subjects is None for e in events if isinstance(e, Approval))
    assert any(e.subject_refs == [ref7] for e in approvals)
    two = next(e for e in approvals if e.subject_refs and len(e.subject_refs) == 2)
    assert runtime.subject_ref_for_id("u00008") in two.subject_refs  # type: ignore[operator]
    # A subject principal acts under their ref (own history lookup), never their id.
    lookups = [e for e in events if isinstance(e, AccessDecision) and e.actor.kind == "subject"]
    assert lookups and {e.actor.id for e in lookups} <= {
        ref7,
        runtime.subject_ref_for_id("u00014"),
        "subject",
    }
    assert ref7 in {e.actor.id for e in lookups}
    failures = [e for e in events if isinstance(e, AuthFailure)]
    assert len(failures) >= 3
    assert all("claimed sub ref hmac-sha256:" in e.reason for e in failures)
    assert any("claimed iss untrusted" in e.reason for e in failures)


def _entries(runtime: Runtime, start: int) -> list[bytes]:
    return [bytes(runtime.ledger.entry(i)) for i in range(start, int(runtime.ledger.size()))]


def test_typed_text_is_committed_not_published(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    """Default: no entry carries what a principal typed; each step carries a commitment."""
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    entries = _entries(runtime, start)
    leaks = [
        (start + i, planted)
        for i, entry in enumerate(entries)
        for planted in PLANTED
        if planted.encode() in entry or json.dumps(planted).encode()[1:-1] in entry
    ]
    assert leaks == []
    events = [decode_event(e) for e in entries]
    steps = {
        e.step: e.reason
        for e in events
        if isinstance(e, Approval) and e.step in ("requested", "approved", "denied", "revoked")
    }
    assert set(steps) == {"requested", "approved", "denied", "revoked"}
    assert all(
        re.fullmatch(rf"{step}; text hmac-sha256:[0-9a-f]{{64}}", r) for step, r in steps.items()
    )
    (reviewed,) = [e for e in events if isinstance(e, Approval) and e.step == "reviewed"]
    assert reviewed.reason.startswith("justified; text hmac-sha256:")  # the outcome in clear
    reads = [e for e in events if isinstance(e, AccessDecision) and e.justification_detail]
    assert reads and all(COMMITMENT.fullmatch(str(e.justification_detail).encode()) for e in reads)
    assert all(e.justification_type for e in reads)  # the reason code stays in clear
    # The policy load's reason, in the change and in the refused attempt's decision.
    (change,) = [e for e in events if isinstance(e, PolicyChange)]
    assert COMMITMENT.fullmatch(change.reason.encode())
    (refused,) = [e for e in events if isinstance(e, AccessDecision) and e.dataset == "@policy"]
    assert refused.decision == "deny" and refused.reason == change.reason


def test_the_commitments_match_the_texts_the_database_keeps(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock, db: Database
) -> None:
    """An auditor with the database and the custodian's key recomputes every commitment."""
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    entries = _entries(runtime, start)
    key = text_key(runtime.vault.subject_hash)  # the custodian's key, derived afresh
    in_log = {m.decode() for entry in entries for m in COMMITMENT.findall(entry)}
    assert in_log
    for commitment in in_log:
        text = runtime.public_text.stored(commitment)
        assert text is not None, commitment
        assert text_commitment(key, text) == commitment
    # The workflow's own rows hold the same texts: each one's commitment is in the log.
    texts = {
        json.loads(str(doc))["justification"]["detail"]
        for (doc,) in db.query("SELECT canonical FROM access_requests")
    }
    texts |= {str(r) for (r,) in db.query("SELECT reason FROM access_approvals")}
    texts |= {str(n) for (n,) in db.query("SELECT notes FROM break_glass_reviews") if n}
    texts |= {str(r) for (r,) in db.query("SELECT reason FROM policy_versions WHERE version > 1")}
    assert {WHY.detail, OUTAGE, APPROVAL, NOTES, POLICY_REASON} <= texts
    for text in [*texts, PURPOSE, DENIAL, REVOCATION, *TYPED_NAMES]:
        assert text_commitment(key, text) in in_log, text
        assert runtime.public_text.matches(text, text_commitment(key, text))
    assert not runtime.public_text.matches("someone else", text_commitment(key, NOTES))


def test_typed_names_are_committed_and_references_kept_only_when_strict(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    """A dataset or field name the catalog does not know, an export destination, a ticket
    that is not a ticket id and a grant id Bastion never issued reach the log as commitments;
    a client's request id only when it is a UUID or hex, else the gateway's own."""
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    events = [decode_event(e) for e in _entries(runtime, start)]
    c = runtime.public_text.commitment
    known = set(runtime.catalog.names) | {"@policy", "@access-history"}

    def committed_or(value: str | None, clear: set[str] | re.Pattern[str]) -> bool:
        if value is None or COMMITMENT.fullmatch(value.encode()):
            return True
        return value in clear if isinstance(clear, set) else bool(clear.fullmatch(value))

    rejected = [e for e in events if isinstance(e, RequestRejected)]
    assert {c(EMAIL), c(NAME_ID), c("Jane Doe"), c("jane.doe.example.com")} <= {
        e.dataset for e in rejected if e.error == "unknown-dataset"
    }
    assert all(committed_or(e.dataset, known) for e in rejected)
    assert {c(EMAIL), c("Jane Doe"), c(f"context.{EMAIL}"), c("shoe_size")} <= {
        e.field for e in rejected
    }
    # Names the catalog or the API schema declares stay readable.
    assert {"filters.subject", "fields"} & {e.field for e in rejected}
    unknown = next(e for e in rejected if e.field == c(EMAIL))
    assert unknown.reason == f"dataset 'users', field {c(EMAIL)!r}: no such field in the catalog"
    destinations = {e.destination for e in events if isinstance(e, Export)}
    assert destinations == {
        c("s3://custodian-exports/sup-31"),
        c(EMAIL),
        c(f"s3://exports/{NAME_ID}"),
    }
    decisions = [e for e in events if isinstance(e, AccessDecision)]
    tickets = {e.ticket for e in decisions}
    assert {"SUP-31", c(NAME_ID), c(RAW_TICKET)} <= tickets
    assert all(committed_or(t, re.compile(r"[A-Z][A-Z0-9]{1,15}-[0-9]{1,10}")) for t in tickets)
    assert c(EMAIL) in {e.grant_id for e in decisions}
    assert all(committed_or(e.grant_id, re.compile(r"[a-z]{2}_[0-9a-f]{32}")) for e in decisions)
    request_ids = {e.request_id for e in [*decisions, *rejected]}
    assert CLIENT_UUID in request_ids
    assert all(r == CLIENT_UUID or re.fullmatch(r"[0-9a-f]{32}", r) for r in request_ids)


@pytest.mark.parametrize("free_text", ["publish"])
def test_publish_puts_typed_text_in_the_log(
    runtime: Runtime, connect: Connect, server: ThreadedServer, clock: FixedClock
) -> None:
    """A custodian that must publish free text gets it verbatim, as before."""
    assert runtime.public_text.mode == "publish"
    start = int(runtime.ledger.size())
    _scenario(runtime, connect, server, clock)
    entries = _entries(runtime, start)
    joined = b"\n".join(entries)
    assert all(p.encode() in joined for p in PLANTED)
    events = [decode_event(e) for e in entries]
    reasons = {(e.step, e.reason) for e in events if isinstance(e, Approval)}
    for step, text in [
        ("requested", WHY.detail),
        ("approved", APPROVAL),
        ("denied", DENIAL),
        ("revoked", REVOCATION),
        ("break-glass", OUTAGE),
        ("reviewed", f"justified: {NOTES}"),
    ]:
        assert (step, text) in reasons
    reads = [e for e in events if isinstance(e, AccessDecision) and e.purpose == PURPOSE]
    assert reads and any(e.justification_detail == WHY.detail for e in reads)
    assert [e.reason for e in events if isinstance(e, PolicyChange)] == [POLICY_REASON]
    assert [e.reason for e in events if getattr(e, "dataset", None) == "@policy"] == [POLICY_REASON]
    assert not any(COMMITMENT.search(e) for e in entries)
    # Names, destinations, tickets and request ids as sent, as before.
    rejected = [e for e in events if isinstance(e, RequestRejected)]
    assert {EMAIL, NAME_ID, "Jane Doe"} <= {e.dataset for e in rejected}
    assert {EMAIL, "Jane Doe", f"context.{EMAIL}"} <= {e.field for e in rejected}
    assert {EMAIL, f"s3://exports/{NAME_ID}"} <= {
        e.destination for e in events if isinstance(e, Export)
    }
    decisions = [e for e in events if isinstance(e, AccessDecision)]
    assert {NAME_ID, RAW_TICKET} <= {e.ticket for e in decisions}
    assert EMAIL in {e.grant_id for e in decisions}
    assert {NAME_ID, RAW_REQUEST_ID} <= {e.request_id for e in [*decisions, *rejected]}
    # Still no raw subject id or protected value, but for the ids given as a ticket and as a
    # request id, published as sent.
    typed = (f'"ticket":"{RAW_TICKET}"'.encode(), f'"request_id":"{RAW_REQUEST_ID}"'.encode())
    for entry in entries:
        for sent in typed:
            entry = entry.replace(sent, b"")
        assert not [v for vs in _raw_values().values() for v in vs if v in entry]


def test_an_unknown_clean_room_column_is_committed(runtime: Runtime, connect: Connect) -> None:
    """A clean-room query grouping by a column the catalog does not know: the refusal names
    it by its commitment, in the field and in the reason."""
    from bastion.synth import SynthSpec
    from snapshot_from_vault import snapshot_from_synth

    spec = SynthSpec(seed=3, users=50, videos=5, events=300, campaigns=2)
    snapshot_from_synth(runtime, spec, runtime.home.path / "synth")
    with pytest.raises(GatewayError) as err:
        connect("adco").cleanroom_query({"template": "count", "epsilon": 0.1, "group_by": [EMAIL]})
    assert err.value.kind == "invalid-query" and EMAIL in err.value.message  # to the caller
    assert err.value.receipt is not None
    entry = bytes(runtime.ledger.entry(err.value.receipt.index))
    assert EMAIL.encode() not in entry
    event = decode_event(entry)
    assert isinstance(event, RequestRejected)
    assert event.field == runtime.public_text.commitment(EMAIL)
    assert repr(event.field) in event.reason
