"""``bastion egress receive nats``, ``receive-http`` and ``trust-bundle --flow NAME`` on the
command line: the recipient fetches what a destination delivered into the directory layout
``verify`` reads. NATS is the real server on 127.0.0.1:4222 (never skipped: without it the
tests fail); the HTTP receiver is the real CLI process, reached over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest

from bastion.cli import egress_verify
from bastion.cli.main import app
from bastion.egress.destinations import nats as nats_destination
from bastion.egress.destinations.http import HttpDestination
from bastion.egress.destinations.nats import NatsDestination
from bastion.egress.payload import private_key_to_pem, public_key_to_b64
from bastion.egress.trust import parse_trust_bundle
from bastion.egress.verify import verify_delivery
from bastion.errors import ConfigError

from .builders import FLOW, Custodian, rows
from .cli_support import run, runner

URL = "nats://127.0.0.1:4222"
TOKEN = "parent-side-token-for-the-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(custodian: Custodian, tmp_path: Path) -> tuple[Path, Path]:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(custodian.trust().to_json()))
    key = tmp_path / "recipient.pem"
    key.write_bytes(private_key_to_pem(custodian.recipient))
    return trust, key


# --- receive nats ------------------------------------------------------------------------------


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """A fresh stream and subject prefix, deleted afterwards."""
    tag = secrets.token_hex(6)
    name, prefix = f"BASTION_TEST_{tag}", f"bastion-test.{tag}"
    yield name, prefix

    async def drop() -> None:
        nc = await nats.connect(URL, connect_timeout=5, allow_reconnect=False)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(drop())


def test_receive_nats_rebuilds_the_deliveries_and_verify_accepts_them(
    custodian: Custodian, tmp_path: Path, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    first = custodian.build(rows(3))
    second = custodian.build(rows(2, start=3, deletes=1), run=2, previous=first.manifest_id)
    destination = NatsDestination(URL, stream=name, subject_prefix=prefix)
    for built in (first, second):
        destination.deliver(built.delivery)
    inbox = tmp_path / "inbox"
    args = ("--url", URL, "--stream", name, "--subject-prefix", prefix, "--flow", FLOW)
    got = run("egress", "receive", "nats", *args, "--out", str(inbox))
    assert got["received"] == [first.manifest_id, second.manifest_id]
    for built in (first, second):
        assert (inbox / FLOW / built.manifest_id / "COMPLETE").is_file()
    trust, key = _files(custodian, tmp_path)
    verified = run(
        "egress",
        "verify",
        str(inbox),
        "--trust",
        str(trust),
        "--key",
        str(key),
        "--state",
        str(tmp_path / "state.sqlite"),
        "--out",
        str(tmp_path / "out"),
    )
    assert [v["run"] for v in verified["verified"]] == [1, 2]
    assert verified["verified"][1]["tombstones"] == 1
    # Nothing is taken off the stream, and what is already here is not written again.
    assert run("egress", "receive", "nats", *args, "--out", str(inbox))["received"] == []


def test_receive_nats_from_a_stream_that_does_not_exist_receives_nothing(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    args = ("--url", URL, "--stream", name, "--subject-prefix", prefix, "--flow", FLOW)
    assert run("egress", "receive", "nats", *args, "--out", str(tmp_path / "in"))["received"] == []


def test_receive_nats_from_a_server_that_is_down_fails_cleanly(tmp_path: Path) -> None:
    down = f"nats://127.0.0.1:{free_port()}"
    failed = run(
        "egress", "receive", "nats", "--url", down, "--flow", FLOW, "--out", str(tmp_path), code=4
    )
    assert failed["error"] == "DestinationUnavailable" and down in failed["message"]
    assert list(tmp_path.iterdir()) == []


def test_receive_nats_refuses_a_bad_flow_name(tmp_path: Path) -> None:
    failed = run("egress", "receive", "nats", "--flow", "../x", "--out", str(tmp_path), code=2)
    assert failed["ok"] is False and list(tmp_path.iterdir()) == []


def test_the_cli_defaults_are_the_destination_defaults() -> None:
    # The CLI repeats them so that --help does not import nats-py.
    assert egress_verify.DEFAULT_NATS_URL == nats_destination.DEFAULT_URL
    assert egress_verify.DEFAULT_STREAM == nats_destination.DEFAULT_STREAM
    assert egress_verify.DEFAULT_PREFIX == nats_destination.DEFAULT_PREFIX


# --- receive-http ------------------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``bastion egress receive-http`` in its own process, with a token from the environment."""
    root, port = tmp_path / "received", free_port()
    env = {**os.environ, "PARENT_RECEIVER_TOKEN": TOKEN}
    command = [sys.executable, "-c", "from bastion.cli.main import app; app()"]
    args = ["egress", "receive-http", "--root", str(root), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *args, "--token-env", "PARENT_RECEIVER_TOKEN", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started == {
            "ok": True,
            "listening": f"http://127.0.0.1:{port}",
            "root": str(root),
            "token": True,
        }
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):  # bounded: 20 s
        assert proc.poll() is None, "the receiver exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the receiver did not start listening")


def test_receive_http_takes_a_delivery_with_the_token_and_verify_accepts_it(
    custodian: Custodian,
    tmp_path: Path,
    receiver: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, root = receiver
    built = custodian.build(rows(4, deletes=1))
    monkeypatch.setenv("CUSTODIAN_SIDE_TOKEN", TOKEN)
    destination = HttpDestination(url, token_env="CUSTODIAN_SIDE_TOKEN")
    destination.deliver(built.delivery)
    assert destination.delivered(FLOW, built.manifest_id)
    verified = verify_delivery(
        root / FLOW / built.manifest_id, custodian.trust(), custodian.recipient
    )
    assert verified.rows == 4 and verified.tombstones == 1
    # Without the token the receiver takes nothing.
    monkeypatch.setenv("CUSTODIAN_SIDE_TOKEN", "not-the-token")
    other = custodian.build(rows(1), run=2, previous=built.manifest_id)
    with pytest.raises(ConfigError, match="answered 401"):
        HttpDestination(url, token_env="CUSTODIAN_SIDE_TOKEN").deliver(other.delivery)
    assert not (root / FLOW / other.manifest_id).exists()


def test_receive_http_needs_its_token_variable_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARENT_RECEIVER_TOKEN_UNSET", raising=False)
    failed = run(
        "egress",
        "receive-http",
        "--root",
        str(tmp_path / "r"),
        "--port",
        str(free_port()),
        "--token-env",
        "PARENT_RECEIVER_TOKEN_UNSET",
        code=2,
    )
    assert "PARENT_RECEIVER_TOKEN_UNSET" in failed["message"]
    assert not (tmp_path / "r").exists()


def test_receive_http_on_a_port_in_use_fails_before_saying_it_listens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = runner.invoke(
            app, ["egress", "receive-http", "--root", str(tmp_path), "--port", port, "--json"]
        )
    assert result.exit_code == 2, result.output
    failed = json.loads(result.stdout)  # one document: the failure, no "listening" first
    assert failed["ok"] is False and "cannot listen" in failed["message"]


def test_receive_http_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    failed = run("egress", "receive-http", "--root", str(root), "--port", str(free_port()), code=2)
    assert "not a directory" in failed["message"]


# --- trust-bundle --flow NAME ------------------------------------------------------------------


FLOW_YAML = """
flows:
  - name: engagement-parent
    version: 1
    kind: records
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {key}
    source:
      dataset: events
    fields:
      video_id: pseudonymize
      event_type: keep
      region: keep
      watch_time_s: {{truncate: 10}}
      day: drop
    schedule: {{every: 1d}}
    destination: {{type: files, path: outbox}}
  - name: engagement-by-region
    version: 1
    kind: aggregate
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {key}
    source: {{dataset: events, mode: full}}
    fields:
      region: keep
      watch_time_s: keep
    aggregate:
      group_by: [region]
      sums: {{watch_time_s: [0, 600]}}
      max_records_per_subject: 20
      epsilon_per_run: 1.0
      epsilon_budget: 30
    schedule: {{every: 1d}}
    destination: {{type: files, path: outbox}}
"""


def test_trust_bundle_reads_a_loaded_flows_fields(custodian: Custodian, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run("init", "--home", str(home), "--origin", f"egress.test.example/{uuid.uuid4().hex[:8]}")
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOW_YAML.format(key=public_key_to_b64(custodian.recipient.public_key())))
    run("egress", "load", str(flows), "--reason", "parent statistics", "--home", str(home))
    out = tmp_path / "trust.json"
    done = run(
        "egress",
        "trust-bundle",
        "--out",
        str(out),
        "--home",
        str(home),
        "--flow",
        "engagement-parent",
        "--flow",
        "engagement-by-region",
        "--flow",
        "typed=a,b",
    )
    # The delivered fields: the drop is read for nothing here, and never delivered; an
    # aggregate delivers its groups and statistics, not the fields it reads.
    delivered = ["event_type", "region", "video_id", "watch_time_s"]
    released = ["region", "count", "count_ci95", "sum_watch_time_s", "sum_watch_time_s_ci95"]
    assert done["fields"] == {
        "engagement-by-region": released,
        "engagement-parent": delivered,
        "typed": ["a", "b"],
    }
    trust = parse_trust_bundle(out.read_bytes())
    assert trust.flow_fields("engagement-parent") == set(delivered)
    assert trust.flow_fields("engagement-by-region") == set(released)
    missing = run(
        "egress",
        "trust-bundle",
        "--out",
        str(tmp_path / "t2.json"),
        "--home",
        str(home),
        "--flow",
        "not-loaded",
        code=2,
    )
    assert "no flow named 'not-loaded'" in missing["message"]
    assert not (tmp_path / "t2.json").exists()
    empty = run(
        "egress",
        "trust-bundle",
        "--out",
        str(tmp_path / "t3.json"),
        "--home",
        str(home),
        "--flow",
        "engagement-parent=",
        code=2,
    )
    assert "--flow" in empty["message"] and not (tmp_path / "t3.json").exists()
