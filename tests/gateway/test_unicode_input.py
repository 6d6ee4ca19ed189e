"""Text that is not Unicode (a lone surrogate) is a recorded 422, never a false ledger outage.

Before the edge check, a ``"\\ud800"`` in a field name, an access request's fields, explain or
a clean-room template reached a refusal that quoted it; RFC 8785 could not encode that entry,
so the caller got 503 ``ledger-unavailable``, nothing was recorded and the ledger-failure
metric went up.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from bastion.demo.platform import PRINCIPALS
from bastion.events import AuthFailure, RequestRejected, decode_event
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.gateway.surrogates import body_location, escape_surrogates, find_surrogate

SUPPORT = {"purpose": "support", "ticket": "SUP-1", "ticket_subjects": ["u00001"]}
JUSTIFIED = {"type": "customer_initiated_support", "detail": "ticket SUP-1"}
LONE = "\\ud800"  # the JSON escape of a lone (high) surrogate, as a client sends it


def _token(rt: Runtime, name: str, **attrs: Any) -> str:
    return rt.issuer.issue(name, {**PRINCIPALS[name], **attrs}, ttl=timedelta(hours=1))


def _ledger_failures(rt: Runtime) -> float:
    value = rt.metrics.registry.get_sample_value("bastion_ledger_append_failures_total")
    return value or 0.0


def _send(
    srv: ThreadedServer, method: str, path: str, token: str | None, body: bytes | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.request(method, srv.url + path, content=body, headers=headers, timeout=30)


# (who, method, path, raw body, the recorded field, the recorded dataset)
CASES: list[tuple[str, str, str, bytes | None, str, str | None]] = [
    # A field name, as the JSON escape and as the raw bytes json decodes with surrogatepass.
    (
        "alice",
        "POST",
        "/datasets/users/read",
        b'{"record_id": "u00001", "fields": ["email", "' + LONE.encode() + b'"]}',
        "fields.1",
        "users",
    ),
    (
        "alice",
        "POST",
        "/datasets/users/read",
        b'{"record_id": "u00001", "fields": ["\xed\xa0\x80"]}',
        "fields.0",
        "users",
    ),
    # A body key: it is named by its escaped form, never recorded as the surrogate.
    (
        "alice",
        "POST",
        "/datasets/users/read",
        b'{"record_id": "u00001", "x' + LONE.encode() + b'": 1}',
        "x\\ud800",
        "users",
    ),
    (
        "kenji",
        "POST",
        "/datasets/events/search",
        b'{"filters": [{"field": "subject", "op": "eq", "value": "u' + LONE.encode() + b'"}]}',
        "filters.0.value",
        "events",
    ),
    (
        "alice",
        "POST",
        "/datasets/users/read",
        b'{"record_id": "u00001", "context": {"purpose": "a\\udfffb"}}',
        "context.purpose",
        "users",
    ),
    (
        "alice",
        "POST",
        "/access-requests",
        b'{"dataset": "users", "fields": ["' + LONE.encode() + b'"], "justification": '
        b'{"type": "customer_initiated_support", "detail": "SUP-1"}}',
        "fields.0",
        None,
    ),
    (
        "alice",
        "POST",
        "/break-glass",
        b'{"dataset": "users", "fields": ["email"], "justification": '
        b'{"type": "break_glass", "detail": "' + LONE.encode() + b'"}}',
        "justification.detail",
        None,
    ),
    (
        "pat",
        "POST",
        "/policy/explain",
        b'{"dataset": "users", "fields": ["' + LONE.encode() + b'"]}',
        "fields.0",
        None,
    ),
    (
        "pat",
        "POST",
        "/policy",
        b'{"text": "permit(principal, action, resource);", "reason": "' + LONE.encode() + b'"}',
        "reason",
        None,
    ),
    (
        "adco",
        "POST",
        "/cleanroom/queries",
        b'{"template": "' + LONE.encode() + b'", "epsilon": 0.1}',
        "template",
        None,
    ),
    (
        "adco",
        "POST",
        "/cleanroom/queries",
        b'{"template": "count", "epsilon": 0.1, "group_by": ["' + LONE.encode() + b'"]}',
        "group_by.0",
        None,
    ),
    # The URL: a percent-encoded surrogate in the query and in the path.
    ("alice", "GET", "/access-requests?scope=mine&status=%ED%A0%80", None, "query.status", None),
    ("alice", "POST", "/datasets/%ED%A0%80/read", b'{"record_id": "u00001"}', "path", None),
]


def test_a_lone_surrogate_anywhere_is_a_recorded_422(
    runtime: Runtime, server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    original_open = runtime.vault.open

    def spy(plan: Any, *stored: Any) -> Any:
        opened.append(plan)
        return original_open(plan, *stored)

    monkeypatch.setattr(runtime.vault, "open", spy)
    failures = _ledger_failures(runtime)
    for who, method, path, body, field, dataset in CASES:
        size = runtime.ledger.size()
        r = _send(server, method, path, _token(runtime, who), body)
        case = f"{method} {path} {body!r}"
        assert r.status_code == 422, (case, r.text)
        out = r.json()
        assert out["error"] == "invalid-unicode", case
        assert field in out["message"], (case, out)
        event = decode_event(runtime.ledger.entry(out["receipt"]["index"]))
        assert isinstance(event, RequestRejected), case
        assert event.error == "invalid-unicode" and event.status == 422, case
        # The place, in clear; or, for a name no schema declares (a body key), as the log
        # carries typed text (a keyed commitment by default).
        assert event.field == field or str(event.field).startswith("hmac-"), (case, event)
        assert event.dataset == dataset, (case, event)
        assert event.actor.id == who
        assert out["receipt"]["index"] == size, case  # appended: the next entry
    assert _ledger_failures(runtime) == failures
    assert opened == []
    assert runtime.metrics.registry.get_sample_value(
        "bastion_input_errors_total", {"kind": "invalid-unicode"}
    ) == len(CASES)


def test_refused_before_authentication_is_a_recorded_401(
    runtime: Runtime, server: ThreadedServer
) -> None:
    failures = _ledger_failures(runtime)
    body = b'{"record_id": "u00001", "fields": ["' + LONE.encode() + b'"]}'
    r = _send(server, "POST", "/datasets/users/read", "garbage", body)
    assert r.status_code == 401, r.text
    event = decode_event(runtime.ledger.entry(r.json()["receipt"]["index"]))
    assert isinstance(event, AuthFailure)
    assert _ledger_failures(runtime) == failures


def test_a_signed_token_with_a_surrogate_claim_is_a_recorded_401(
    runtime: Runtime, server: ThreadedServer
) -> None:
    failures = _ledger_failures(runtime)
    # The issuer validates attribute claims, not the subject: the verifier checks every claim.
    token = runtime.issuer.issue("al\ud800ice", PRINCIPALS["alice"], ttl=timedelta(hours=1))
    r = _send(server, "POST", "/datasets/users/read", token, b'{"record_id": "u00001"}')
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "auth-malformed"
    event = decode_event(runtime.ledger.entry(r.json()["receipt"]["index"]))
    assert isinstance(event, AuthFailure) and event.failure == "malformed"
    assert _ledger_failures(runtime) == failures


def test_paired_surrogate_escapes_are_ordinary_text(
    runtime: Runtime, server: ThreadedServer
) -> None:
    """An astral character spelled as a surrogate pair is valid Unicode: not refused."""
    body = (
        b'{"record_id": "u00001", "fields": ["language"], "context": '
        b'{"purpose": "support \\ud83d\\ude00", "ticket": "SUP-1", "ticket_subjects": ["u00001"]}}'
    )
    r = _send(server, "POST", "/datasets/users/read", _token(runtime, "alice"), body)
    assert r.status_code != 422 or r.json()["error"] != "invalid-unicode", r.text
    assert r.status_code < 500, r.text


def test_locations() -> None:
    assert find_surrogate({"a": [1, "ok", {"b": "x\udc00"}]}) == ("a", 2, "b")
    assert find_surrogate({"a\ud800": 1}) == ("a\\ud800",)
    assert find_surrogate(["\U0001f600"]) is None
    assert escape_surrogates("a\ud800b\udfff") == "a\\ud800b\\udfff"
    assert body_location(b'{"a": "\\\\ud800"}') is None  # an escaped backslash: plain text
    assert body_location(b'{"a": ["\\uD800"]}') == ("body", "a", 0)
    assert body_location(b"[" * 100_000) is None  # not JSON: the route answers it
    deep = b'{"a": ' * 5_000 + b'"\\ud800"' + b"}" * 5_000
    assert body_location(deep) in (None, ("body", *["a"] * 5_000))
