"""The HTTP destination against the real receiver, served by uvicorn on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from bastion.egress.destinations import DestinationUnavailable, DirectoryDestination
from bastion.egress.destinations import files as files_mod
from bastion.egress.destinations.http import HttpDestination
from bastion.egress.destinations.http_receiver import create_receiver_app
from bastion.egress.verify import verify_delivery
from bastion.errors import ConfigError

from .builders import FLOW as BUILT_FLOW
from .builders import Custodian, rows
from .destination_cases import FLOW, Crash, CrashAfter, delivery

TOKEN = "s3cret-token-for-the-test"


@dataclass
class Receiver:
    root: Path
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(root: Path, token: str | None) -> Receiver:
    port = _free_port()
    config = uvicorn.Config(
        create_receiver_app(root, token=token), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # wait until it listens (bounded: 10 s)
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the receiver did not start"
    return Receiver(root, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = _serve(tmp_path / "received", TOKEN)
    yield r
    r.stop()


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BASTION_TEST_PARENT_TOKEN", TOKEN)
    return "BASTION_TEST_PARENT_TOKEN"


class Counting(httpx.HTTPTransport):
    """The real transport, counting requests by method."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.method] = self.calls.get(request.method, 0) + 1
        return super().handle_request(request)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith(".")
    }


def test_a_delivery_is_put_file_by_file_and_lands_whole(receiver: Receiver, token_env: str) -> None:
    d = delivery(chunks=2, chunk_bytes=3 << 20)
    counting = Counting()
    dest = HttpDestination(receiver.url, token_env=token_env, transport=counting)
    assert not dest.delivered(FLOW, d.manifest_id)
    dest.deliver(d)
    assert dest.delivered(FLOW, d.manifest_id)
    assert _tree(receiver.root) == {f"{FLOW}/{d.manifest_id}/{n}": b for n, b in d.files()}
    assert counting.calls["PUT"] == len(d.files())


def test_redelivery_puts_nothing(receiver: Receiver, token_env: str) -> None:
    d = delivery()
    HttpDestination(receiver.url, token_env=token_env).deliver(d)
    counting = Counting()
    HttpDestination(receiver.url, token_env=token_env, transport=counting).deliver(d)
    assert counting.calls == {"GET": 1}  # asked whether COMPLETE is there; it was
    assert len(_tree(receiver.root)) == len(d.files())


@pytest.mark.parametrize("k", [0, 2, 4])  # 4 = every file but COMPLETE
def test_a_crash_after_k_files_is_finished_once_by_the_retry(
    k: int, receiver: Receiver, token_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = delivery(chunks=2)
    dest = HttpDestination(receiver.url, token_env=token_env)
    with monkeypatch.context() as m, pytest.raises(Crash):
        m.setattr(dest, "_put", CrashAfter(k, dest._put))
        dest.deliver(d)
    assert not dest.delivered(FLOW, d.manifest_id)
    assert not (receiver.root / FLOW / d.manifest_id).exists()
    HttpDestination(receiver.url, token_env=token_env).deliver(d)
    assert dest.delivered(FLOW, d.manifest_id)
    assert _tree(receiver.root) == {f"{FLOW}/{d.manifest_id}/{n}": b for n, b in d.files()}


@pytest.mark.timeout(30)  # the bound: connect at most 5 s, read at most timeout_s=3, per call
def test_a_stopped_receiver_fails_cleanly_and_the_retry_delivers(
    tmp_path: Path, token_env: str
) -> None:
    first = _serve(tmp_path / "received", TOKEN)
    first.stop()
    d = delivery()
    dest = HttpDestination(first.url, token_env=token_env, timeout_s=3)
    with pytest.raises(DestinationUnavailable, match="could not be reached"):
        dest.deliver(d)
    with pytest.raises(DestinationUnavailable):
        dest.delivered(FLOW, d.manifest_id)
    again = _serve(tmp_path / "received", TOKEN)
    try:
        dest = HttpDestination(again.url, token_env=token_env, timeout_s=3)
        assert not dest.delivered(FLOW, d.manifest_id)
        dest.deliver(d)
        assert dest.delivered(FLOW, d.manifest_id)
    finally:
        again.stop()


@pytest.mark.timeout(30)  # the bound: timeout_s=1 for the read
def test_a_receiver_that_never_answers_is_unavailable_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        dest = HttpDestination(f"http://127.0.0.1:{port}", timeout_s=1)
        with pytest.raises(DestinationUnavailable, match="ReadTimeout"):
            dest.deliver(delivery())


def test_a_receiver_that_answers_5xx_is_unavailable_and_4xx_a_config_error() -> None:
    def answer(status: int) -> HttpDestination:
        return HttpDestination(
            "https://parent.example",
            transport=httpx.MockTransport(lambda _: httpx.Response(status, text="busy")),
        )

    d = delivery()
    for status in (500, 503, 429):
        with pytest.raises(DestinationUnavailable, match=f"answered {status}"):
            answer(status).deliver(d)
    for status in (400, 401, 403, 409):
        with pytest.raises(ConfigError, match=f"answered {status}"):
            answer(status).deliver(d)


def test_the_token_comes_from_the_environment(receiver: Receiver, token_env: str) -> None:
    d = delivery()
    with pytest.raises(ConfigError, match="answered 401"):
        HttpDestination(receiver.url).deliver(d)  # no token
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE, which is not set"):
        HttpDestination(receiver.url, token_env="NOT_SET_ANYWHERE").deliver(d)
    assert not (receiver.root / FLOW).exists()


def test_a_redirect_is_not_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"Location": "https://elsewhere.example/steal"})

    dest = HttpDestination("https://parent.example", transport=httpx.MockTransport(handler))
    with pytest.raises(ConfigError, match="answered 307"):
        dest.deliver(delivery())
    assert all(u.startswith("https://parent.example/") for u in seen)


def test_the_parent_verifies_what_arrived_over_http(
    receiver: Receiver, token_env: str, custodian: Custodian
) -> None:
    built = custodian.build(rows(5, deletes=2))
    HttpDestination(receiver.url, token_env=token_env).deliver(built.delivery)
    path = DirectoryDestination(receiver.root).path_of(BUILT_FLOW, built.manifest_id)
    verified = verify_delivery(path, custodian.trust(), custodian.recipient)
    assert (verified.manifest_id, verified.tombstones) == (built.manifest_id, 2)


# ---- the receiver refuses ------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_receiver_app(tmp_path / "in", token=TOKEN))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _put(client: TestClient, mid: str, name: str, data: bytes, **headers: str) -> httpx.Response:
    response: httpx.Response = client.put(
        f"/{FLOW}/{mid}/{name}", content=data, headers={**AUTH, **headers}
    )
    return response


def test_the_receiver_needs_the_token(client: TestClient) -> None:
    mid = "a" * 32
    assert client.put(f"/{FLOW}/{mid}/entry.json", content=b"{}").status_code == 401
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert client.put(f"/{FLOW}/{mid}/entry.json", content=b"{}", headers=wrong).status_code == 401
    assert client.get(f"/{FLOW}/{mid}/COMPLETE").status_code == 401


@pytest.mark.parametrize(
    ("flow", "mid", "name"),
    [
        (FLOW, "a" * 32, "..%2F..%2Fescape"),
        (FLOW, "a" * 32, "notes.txt"),
        (FLOW, "a" * 32, ".hidden"),
        ("..", "a" * 32, "entry.json"),
        (".partial", "a" * 32, "entry.json"),
        (FLOW, "../" + "a" * 29, "entry.json"),
        (FLOW, "A" * 32, "entry.json"),
    ],
)
def test_the_receiver_writes_only_layout_names(
    client: TestClient, tmp_path: Path, flow: str, mid: str, name: str
) -> None:
    r = client.put(f"/{flow}/{mid}/{name}", content=b"x", headers=AUTH)
    assert r.status_code == 404
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").rglob("*"))


def test_complete_before_every_file_is_refused(client: TestClient, tmp_path: Path) -> None:
    d = delivery(chunks=2)
    files = d.files()
    for name, data in files[:-2]:  # the last chunk is missing
        assert _put(client, d.manifest_id, name, data).status_code == 201
    r = _put(client, d.manifest_id, "COMPLETE", files[-1][1])
    assert r.status_code == 409 and "COMPLETE does not name" in r.json()["detail"]
    assert not (tmp_path / "in" / FLOW / d.manifest_id).exists()
    assert _put(client, d.manifest_id, *files[-2]).status_code == 201
    wrong = _put(client, d.manifest_id, "COMPLETE", f"{'b' * 32} 2\n".encode())
    assert wrong.status_code == 409  # a marker for another delivery
    assert _put(client, d.manifest_id, "COMPLETE", files[-1][1]).status_code == 201
    assert client.get(f"/{FLOW}/{d.manifest_id}/COMPLETE", headers=AUTH).status_code == 200


def test_a_complete_delivery_is_never_overwritten(client: TestClient) -> None:
    d = delivery(chunks=1)
    for name, data in d.files():
        assert _put(client, d.manifest_id, name, data).status_code == 201
    assert _put(client, d.manifest_id, "chunk-00000.hpke", d.chunks[0]).status_code == 200
    r = _put(client, d.manifest_id, "chunk-00000.hpke", b"other bytes")
    assert r.status_code == 409
    got = client.get(f"/{FLOW}/{d.manifest_id}/chunk-00000.hpke", headers=AUTH)
    assert got.content == d.chunks[0]


def test_the_receiver_bounds_each_file_and_checks_the_idempotency_key(
    client: TestClient,
) -> None:
    mid = "c" * 32
    assert _put(client, mid, "COMPLETE", b"x" * 5000).status_code == 413  # 4096 at most
    r = _put(client, mid, "entry.json", b"{}", **{"Idempotency-Key": f"{'d' * 32}/entry.json"})
    assert r.status_code == 400
    assert client.get(f"/{FLOW}/{mid}/entry.json", headers=AUTH).status_code == 404


def test_a_temporary_file_a_killed_writer_left_is_not_committed(
    client: TestClient, tmp_path: Path
) -> None:
    d = delivery(chunks=1)
    files = d.files()
    for name, data in files[:-1]:
        assert _put(client, d.manifest_id, name, data).status_code == 201
    staging = files_mod.staging_dir(tmp_path / "in", FLOW, d.manifest_id)
    (staging / ".chunk-00000.hpke.dead.tmp").write_bytes(b"torn")
    assert _put(client, d.manifest_id, *files[-1]).status_code == 201
    final = files_mod.final_dir(tmp_path / "in", FLOW, d.manifest_id)
    assert sorted(p.name for p in final.iterdir()) == sorted(n for n, _ in files)
