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
from bastion.events import AccessDecision, Approval, AuthFailure, PolicyChange, decode_event
from bastion.gateway.auth import TokenIssuer
from bastion.gateway.bootstrap import bootstrap, ingest, sample_event, sample_user
from bastion.gateway.client import Context, Filter, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import ENV_FREE_TEXT
from bastion.policy import text_commitment, text_key
from bastion.store import Database

from .conftest import USERS, Connect

# A person the typed text names (not a data subject of the vault): it must never reach the
# public log unless the custodian publishes free text.
PLANTED = ("jane.doe@example.com", "Jane Doe")
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
    return Context(
        purpose=PURPOSE,
        ticket="SUP-31",
        ticket_subjects=list(subjects),
        justification=WHY,
        **over,
    )


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
    for text in [*texts, PURPOSE, DENIAL, REVOCATION]:
        assert text_commitment(key, text) in in_log, text
        assert runtime.public_text.matches(text, text_commitment(key, text))
    assert not runtime.public_text.matches("someone else", text_commitment(key, NOTES))


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
    # Still no raw subject id or protected value.
    assert not [v for e in entries for vs in _raw_values().values() for v in vs if v in e]
