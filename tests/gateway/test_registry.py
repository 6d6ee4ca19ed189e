"""The principal registry at the gateway: a signed token is not enough. Its (issuer, sub) must
be registered, active, and allowed every attribute the token claims."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from bastion.demo.platform import PRINCIPALS
from bastion.events import AuthFailure, decode_event
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.policy.registry import Claimed, PrincipalEntry, PrincipalRefused, check_entry

from .conftest import Connect, register_ticket

SUPPORT = Context(purpose="customer support", ticket="SUP-1")  # names u00001 (below)


@pytest.fixture(autouse=True)
def _ticket(runtime: Runtime) -> None:
    """SUP-1, as the ticketing service registered it."""
    register_ticket(runtime, "SUP-1", ["u00001"])


def _refused(runtime: Runtime, err: GatewayError, kind: str) -> None:
    assert err.status == 401 and err.kind == f"auth-{kind}"
    assert err.receipt is not None
    event = decode_event(runtime.ledger.entry(err.receipt.index))
    assert isinstance(event, AuthFailure) and event.failure == kind


def test_an_unregistered_sub_is_refused_even_with_a_valid_signature(
    runtime: Runtime, connect: Connect
) -> None:
    mallory = connect("mallory", register=False, **PRINCIPALS["alice"])
    with pytest.raises(GatewayError) as err:
        mallory.read("users", "u00001", fields=["email"], context=SUPPORT)
    _refused(runtime, err.value, "unregistered")


@pytest.mark.parametrize(
    "claims",
    [
        {"clearance": "restricted"},  # alice is registered up to confidential
        {"role": "security_officer"},  # not a role alice may act in
        {"employer": "globalco"},
        {"employer_country": "DE"},
    ],
)
def test_claims_beyond_the_registered_attributes_are_refused(
    runtime: Runtime, connect: Connect, claims: dict[str, str]
) -> None:
    alice = connect("alice", **claims)
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["email"], context=SUPPORT)
    _refused(runtime, err.value, "attribute-not-allowed")


def test_less_than_the_registered_attributes_is_fine(runtime: Runtime, connect: Connect) -> None:
    out = connect("alice", clearance="internal").read(
        "users", "u00001", fields=["country"], context=SUPPORT
    )
    assert out.decision == "allow"


def test_a_disabled_principal_is_refused_at_once(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    assert alice.read("users", "u00001", fields=["email"], context=SUPPORT).decision == "allow"
    runtime.registry.set_status("bastion", "alice", "disabled")
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["email"], context=SUPPORT)
    _refused(runtime, err.value, "disabled")
    runtime.registry.set_status("bastion", "alice", "active")
    assert alice.read("users", "u00001", fields=["email"], context=SUPPORT).decision == "allow"


def test_data_subjects_need_no_entry(runtime: Runtime, connect: Connect) -> None:
    token = runtime.issuer.issue("u00001", {"role": "subject"}, ttl=timedelta(minutes=5))
    me = connect(token=token)
    assert me.subject_accesses("u00001").entries is not None


def test_the_setting_any_keeps_the_old_behaviour(runtime: Runtime, connect: Connect) -> None:
    runtime.config = runtime.config.model_copy(update={"principals": "any"})
    mallory = connect("mallory", register=False, **PRINCIPALS["alice"])
    out = mallory.read("users", "u00001", fields=["country"], context=SUPPORT)
    assert out.decision == "allow"


def test_check_entry_rules() -> None:
    entry = PrincipalEntry(
        issuer="bastion",
        sub="li",
        roles=("engineer",),
        employer="globalco",
        employer_country="SG",
        max_clearance="internal",
        locations=("SG", "JP"),
    )
    ok = Claimed("bastion", "li", "engineer", "globalco", "SG", "JP", "internal")
    check_entry(entry, ok)
    for bad in (
        dataclasses.replace(ok, location_country="US"),
        dataclasses.replace(ok, clearance="confidential"),
        dataclasses.replace(ok, employer=None),
    ):
        with pytest.raises(PrincipalRefused) as err:
            check_entry(entry, bad)
        assert err.value.kind == "attribute-not-allowed"
    with pytest.raises(PrincipalRefused) as err:
        check_entry(None, ok)
    assert err.value.kind == "unregistered"
