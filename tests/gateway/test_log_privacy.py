"""No protected value reaches a log line, whatever the request does, including a 500."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bastion.demo.platform import sample_user
from bastion.gateway.client import Context, Filter, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.logs import JsonFormatter

from .conftest import Connect, register_ticket

SUPPORT = Context(purpose="customer support", ticket="SUP-1")
USER = sample_user(1)
PLANTED = [USER["email"], USER["name"], USER["phone"], USER["ip_address"]]


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line of every logger, at DEBUG, through Bastion's JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_no_protected_value_in_any_log_line(
    runtime: Runtime, connect: Connect, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_ticket(runtime, "SUP-1", ["u00001"])
    alice = connect("alice")
    out = alice.read("users", "u00001", fields=["email", "name", "phone"], context=SUPPORT)
    assert out.records[0].values["email"] == USER["email"]  # the values did flow
    alice.batch_read("users", ["u00001", "u00002"], fields=["email"], context=SUPPORT)
    alice.search(
        "users",
        filters=[Filter(field="record_id", value="u00001")],
        fields=["email"],
        context=SUPPORT,
    )
    with pytest.raises(GatewayError):
        connect("kenji").read("users", "u00001", fields=["email"], context=Context(purpose="x"))

    # A bug whose exception message quotes a protected value: the client gets a bare 500,
    # and the log says where it happened.
    def broken_engine() -> object:
        raise ValueError(f"cannot plan for {USER['email']} ({USER['name']})")

    monkeypatch.setattr(runtime, "engine", broken_engine)
    with pytest.raises(GatewayError) as err:
        alice.read("users", "u00001", fields=["email"], context=SUPPORT, request_id="ab" * 16)
    assert err.value.status == 500

    text = log_lines.getvalue()
    for value in PLANTED:
        assert value not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    failures = [
        line for line in lines if line["message"].startswith("unexpected error on /datasets/")
    ]
    assert failures, text[-2000:]
    failure = failures[-1]
    assert "builtins.ValueError at" in failure["message"]
    assert "{dataset}" in failure["message"]  # the route's template, not the raw path
    assert failure.get("request_id") == "ab" * 16
