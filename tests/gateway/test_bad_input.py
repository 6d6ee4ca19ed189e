"""Bad input: each case is a clear 4xx, is recorded in the ledger and releases nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.demo.platform import PRINCIPALS
from bastion.events import AccessDecision, AuthFailure, RequestRejected, decode_event
from bastion.gateway.auth import TokenIssuer
from bastion.gateway.client import Context, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer

from .conftest import Connect, register_ticket

SUPPORT = {"purpose": "support", "ticket": "SUP-1"}  # SUP-1 names u00001 (below)


@pytest.fixture(autouse=True)
def _ticket(runtime: Runtime) -> None:
    """SUP-1, as the ticketing service registered it."""
    register_ticket(runtime, "SUP-1", ["u00001"])


def _token(rt: Runtime, name: str = "alice") -> str:
    return rt.issuer.issue(name, PRINCIPALS[name], ttl=timedelta(hours=1))


def _post(srv: ThreadedServer, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(srv.url + path, headers=headers, timeout=30, **kw)


def _recorded(rt: Runtime, body: dict[str, Any]) -> Any:
    """The ledger event a refusal's receipt names; the refusal must carry one."""
    assert body.get("receipt"), body
    return decode_event(rt.ledger.entry(body["receipt"]["index"]))


class OpenSpy:
    def __init__(self, rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = rt.vault.open

        def spy(recorded: Any, *stored: Any) -> Any:
            self.calls += 1
            return original(recorded, *stored)

        monkeypatch.setattr(rt.vault, "open", spy)


def test_malformed_json(
    runtime: Runtime, server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = OpenSpy(runtime, monkeypatch)
    r = _post(
        server,
        "/datasets/users/read",
        _token(runtime),
        content=b'{"record_id": "u00001", "fields": ["email"',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"] == "malformed-json"
    event = _recorded(runtime, r.json())
    assert isinstance(event, RequestRejected) and event.error == "malformed-json"
    assert event.actor.id == "alice"
    assert spy.calls == 0 and "person1" not in r.text


def test_malformed_json_without_a_valid_token_is_a_recorded_401(
    runtime: Runtime, server: ThreadedServer
) -> None:
    r = _post(
        server, "/datasets/users/read", "garbage", content=b"{", headers={"content-type": "x"}
    )
    assert r.status_code == 401
    assert isinstance(_recorded(runtime, r.json()), AuthFailure)


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        (
            "/datasets/nope/read",
            {"record_id": "u00001", "context": SUPPORT},
            404,
            "unknown-dataset",
        ),
        (
            "/datasets/users/read",
            {"record_id": "u00001", "fields": ["email", "shoe_size"], "context": SUPPORT},
            422,
            "unknown-field",
        ),
        ("/datasets/users/search", {"page_size": 10**9}, 422, "page-size-out-of-range"),
        ("/datasets/users/search", {"page_size": 0}, 422, "page-size-out-of-range"),
        (
            "/datasets/users/search",
            {"filters": [{"field": "email", "op": "eq", "value": "x"}]},
            422,
            "invalid-filter",
        ),
        (
            "/datasets/users/search",
            {"filters": [{"field": "subject", "op": "like", "value": "%"}]},
            422,
            "invalid-filter",
        ),
        (
            "/datasets/users/search",
            {"filters": [{"field": "subject", "op": "in", "value": "u00001"}]},
            422,
            "invalid-filter",
        ),
        ("/datasets/users/batch-read", {"record_ids": ["u1"] * 1001}, 422, "invalid-input"),
        ("/datasets/users/read", {"record_id": "u00001", "extra": 1}, 422, "invalid-input"),
    ],
)
def test_bad_requests_are_recorded_4xx(
    runtime: Runtime,
    server: ThreadedServer,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict[str, Any],
    status: int,
    kind: str,
) -> None:
    spy = OpenSpy(runtime, monkeypatch)
    r = _post(server, path, _token(runtime), json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == kind
    event = _recorded(runtime, r.json())
    assert isinstance(event, RequestRejected) and event.error == kind and event.status == status
    assert spy.calls == 0


def test_injection_attempts_match_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.gateway.client import Filter

    kenji = connect("kenji")
    ctx = Context(purpose="debugging")
    before = runtime.db.query("SELECT COUNT(*) FROM vault_records")[0][0]
    for value in (
        "u00001' OR '1'='1",
        'u00001"; DROP TABLE vault_records; --',
        "%",
        "*",
        "u00001) OR (1=1",
    ):
        out = kenji.search(
            "events",
            filters=[Filter(field="subject", value=value)],
            context=ctx,
            fields=["event_id"],
        )
        assert out.records == []
        out = kenji.search(
            "events",
            filters=[Filter(field="record_id", value=value)],
            context=ctx,
            fields=["event_id"],
        )
        assert out.records == []
    assert runtime.db.query("SELECT COUNT(*) FROM vault_records")[0][0] == before
    # A dataset name that is not a name never reaches the catalog or the database.
    with pytest.raises(GatewayError) as err:
        kenji.read("users;DROP TABLE vault_records", "u00001", context=ctx)
    assert err.value.status in (404, 422) and err.value.receipt is not None


def test_forged_page_token(runtime: Runtime, connect: Connect) -> None:
    kenji = connect("kenji")
    with pytest.raises(GatewayError) as err:
        kenji.search("events", page_token="not-ours!", context=Context(purpose="x"))
    assert err.value.status == 422 and err.value.receipt is not None


def _claims(rt: Runtime, **over: Any) -> dict[str, Any]:
    token = rt.issuer.issue("alice", PRINCIPALS["alice"])
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(over)
    return claims


@pytest.mark.parametrize(
    "case",
    ["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "forged", "missing", "garbage"],
)
def test_bad_tokens_are_recorded_401s(
    runtime: Runtime, server: ThreadedServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    spy = OpenSpy(runtime, monkeypatch)
    now = int(runtime.clock.now().timestamp())
    key = Ed25519PrivateKey.generate()
    kid = runtime.issuer.jwk["kid"]
    sign_own = runtime.issuer._key  # the genuine issuer key, to isolate each failure
    tokens: dict[str, str | None] = {
        "expired": jwt.encode(
            _claims(runtime, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
            sign_own,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "not-yet-valid": jwt.encode(
            _claims(runtime, nbf=now + 3600), sign_own, algorithm="EdDSA", headers={"kid": kid}
        ),
        "wrong-audience": jwt.encode(
            _claims(runtime, aud="another-service"),
            sign_own,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "wrong-issuer": TokenIssuer(key, issuer="https://evil.example", clock=runtime.clock).issue(
            "alice", PRINCIPALS["alice"]
        ),
        "forged": jwt.encode(_claims(runtime), key, algorithm="EdDSA", headers={"kid": kid}),
        "missing": None,
        "garbage": "abc.def.ghi",
    }
    r = _post(
        server,
        "/datasets/users/read",
        tokens[case],
        json={"record_id": "u00001", "fields": ["email"], "context": SUPPORT},
    )
    assert r.status_code == 401, r.text
    event = _recorded(runtime, r.json())
    assert isinstance(event, AuthFailure)
    expected = {"forged": "bad-signature", "garbage": "malformed"}.get(case, case)
    assert event.failure == expected
    assert spy.calls == 0 and "person1" not in r.text


def test_ledger_failure_releases_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.errors import LedgerUnavailable

    spy = OpenSpy(runtime, monkeypatch)
    alice = connect("alice")

    def broken(*_a: Any, **_k: Any) -> Any:
        raise LedgerUnavailable("disk on fire")

    monkeypatch.setattr(runtime.ledger.sequencer, "submit_one", broken)
    monkeypatch.setattr(runtime.ledger.sequencer, "submit", broken)
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["email"], context=Context(**SUPPORT))
    assert err.value.status == 503 and err.value.kind == "ledger-unavailable"
    assert spy.calls == 0
    assert "person1" not in str(err.value) and err.value.receipt is None


def test_ledger_broken_in_the_database_releases_nothing(
    runtime: Runtime, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break the real log's storage: the sequencer's transaction fails, nothing is opened."""
    spy = OpenSpy(runtime, monkeypatch)
    alice = connect("alice")
    alice.read("users", "u00001", fields=["email"], context=Context(**SUPPORT))
    assert spy.calls == 1
    with runtime.db.transaction() as cur:
        cur.execute("ALTER TABLE ledger_state RENAME TO ledger_state_broken")
    try:
        with pytest.raises(GatewayError) as err:
            alice.read("users", "u00001", fields=["email"], context=Context(**SUPPORT))
        assert err.value.status == 503
        assert spy.calls == 1
    finally:
        with runtime.db.transaction() as cur:
            cur.execute("ALTER TABLE ledger_state_broken RENAME TO ledger_state")


def test_policy_naming_an_unknown_attribute_is_refused(runtime: Runtime, connect: Connect) -> None:
    pat = connect("pat")
    before = pat.policy()["sha256"]
    bad = (
        '@id("typo")\n@transform("clear")\n'
        'permit (principal, action == Bastion::Action::"read", resource is Bastion::Field)\n'
        "when { principal.shoe_size > 3 };\n"
    )
    with pytest.raises(GatewayError) as err:
        pat.load_policy(before and bad, "try a typo")
    assert err.value.status == 422 and err.value.kind == "policy-rejected"
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, RequestRejected) and event.error == "policy-rejected"
    assert pat.policy()["sha256"] == before


def test_policy_breaking_an_invariant_is_refused_with_a_counterexample(
    runtime: Runtime, connect: Connect
) -> None:
    pat = connect("pat")
    current = pat.policy()
    # The review's finding, reintroduced: a flag that lifts the two-approver forbid.
    regressed = current["text"].replace(
        "unless { context.grant && context.approvals >= 2 };",
        "unless { (context.grant && context.approvals >= 2) || context.break_glass };",
        1,
    )
    assert regressed != current["text"]
    with pytest.raises(GatewayError) as err:
        pat.load_policy(regressed, "let break-glass lift the forbid")
    assert err.value.status == 422 and err.value.kind == "policy-breaks-invariant"
    broken = {i["id"]: i for i in err.value.detail["invariants"]}
    cx = broken["break-glass-only-cleared-staff-with-mfa"]["counterexample"]
    assert cx["context"]["break_glass"] is True and cx["denied_with"]["break_glass"] is False
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, RequestRejected) and event.error == "policy-breaks-invariant"
    assert pat.policy()["sha256"] == current["sha256"]


def test_policy_load_needs_administer(runtime: Runtime, connect: Connect) -> None:
    alice = connect("alice")
    text = connect("pat").policy()["text"]
    with pytest.raises(GatewayError) as err:
        alice.load_policy(text + "\n// tweak\n", "sneaky")
    assert err.value.status == 403
    event = decode_event(runtime.ledger.entry(err.value.receipt.index))  # type: ignore[union-attr]
    assert isinstance(event, AccessDecision) and event.decision == "deny"
