"""Access Transparency: a subject sees who touched their data, with proofs checked offline."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.demo.platform import PRINCIPALS
from bastion.gateway.client import Context, GatewayError, Justification
from bastion.gateway.runtime import Runtime
from bastion.ledger.note import NoteVerifier
from bastion.ledger.tlogproof import verify_proof

from .conftest import Connect, register_ticket

SUPPORT = Context(
    purpose="customer support",
    ticket="SUP-5",  # names u00004 (registered below)
    justification=Justification(type="customer_initiated_support", detail="password reset help"),
)


@pytest.fixture(autouse=True)
def _ticket(runtime: Runtime) -> None:
    """SUP-5, as the ticketing service registered it."""
    register_ticket(runtime, "SUP-5", ["u00004"])


def test_subject_sees_accesses_with_offline_proofs(runtime: Runtime, connect: Connect) -> None:
    alice, kenji = connect("alice"), connect("kenji")
    alice.read("users", "u00004", fields=["email", "phone"], context=SUPPORT)
    token = runtime.vault.pseudonym_of("u00004") or ""  # kenji names accounts by pseudonym
    kenji.read("users", token, fields=["user_id"], context=Context(purpose="dedupe"))
    alice.read("users", "u00005", fields=["email"], context=SUPPORT)  # filtered: not in ticket
    me = connect(
        token=runtime.issuer.issue("u00004", {"role": "subject"}, ttl=timedelta(minutes=5))
    )
    history = me.subject_accesses("u00004")
    vkey = runtime.ledger.vkey
    verifier = NoteVerifier.from_vkey(vkey)
    reads = [e for e in history.entries if e.event.get("dataset") == "users"]
    assert {e.event["actor"]["id"] for e in reads} == {"alice", "kenji"}
    for e in history.entries:
        verified = verify_proof(e.proof, e.entry, verifier)  # offline: entry + proof + vkey
        assert verified.index == e.index
    alice_entry = next(e for e in reads if e.event["actor"]["id"] == "alice")
    assert alice_entry.event["released_fields"] == {"email": "clear", "phone": "clear"}
    raw = me.request("GET", "/subjects/u00004/accesses")
    at = next(a["access_transparency"] for a in raw["accesses"] if a["index"] == alice_entry.index)
    assert at["principal_employer"] == "custodian"
    assert at["principal_office_country"] == "US"
    assert at["principal_physical_location_country"] == "US"
    assert at["principal_job_role"] == "engineer"
    assert at["justification"]["type"] == "customer_initiated_support"
    assert at["accessed_resources"]["fields"] == {"email": "clear", "phone": "clear"}
    kenji_at = next(
        a["access_transparency"] for a in raw["accesses"] if a["event"]["actor"]["id"] == "kenji"
    )
    assert kenji_at["principal_physical_location_country"] == "SG"
    # A tampered entry does not verify.
    tampered = alice_entry.entry.replace(b"alice", b"carol")
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError subclasses
        verify_proof(alice_entry.proof, tampered, verifier)


def test_only_the_subject_and_auditors(runtime: Runtime, connect: Connect) -> None:
    connect("alice").read("users", "u00004", fields=["email"], context=SUPPORT)
    other = connect(token=runtime.issuer.issue("u00005", {"role": "subject"}))
    with pytest.raises(GatewayError) as err:
        other.subject_accesses("u00004")
    assert err.value.status == 403 and err.value.receipt is not None
    with pytest.raises(GatewayError) as err:
        connect("alice").subject_accesses("u00004")
    assert err.value.status == 403
    audra = connect("audra")
    seen = audra.subject_accesses("u00004")
    assert any(e.event.get("actor", {}).get("id") == "alice" for e in seen.entries)
    assert PRINCIPALS["audra"]["role"] == "auditor"


def test_unknown_subject_has_empty_history(runtime: Runtime, connect: Connect) -> None:
    audra = connect("audra")
    out = audra.subject_accesses("u99999")
    assert out.entries == [] and out.checkpoint.startswith(runtime.ledger.origin)
