"""The NATS JetStream destination, against the real server on 127.0.0.1:4222 (JetStream on).

Each test has its own stream and subject prefix, deleted at the end. These tests never skip:
without the server (``make system`` starts it) they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from bastion.egress.delivery import Delivery
from bastion.egress.destinations import DestinationUnavailable, DirectoryDestination
from bastion.egress.destinations.nats import (
    PART_SIZE,
    NatsDestination,
    fetch_deliveries,
    messages_of,
    receive_nats,
)
from bastion.egress.verify import verify_delivery
from bastion.errors import ConfigError, InputError

from .builders import FLOW as BUILT_FLOW
from .builders import Custodian, rows
from .destination_cases import FLOW, Crash, CrashAfter, delivery

URL = "nats://127.0.0.1:4222"
MiB = 1 << 20
T = TypeVar("T")


def _admin(step: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run one JetStream management step (the test's own connection, not the code's)."""

    async def main() -> T:
        nc = await nats.connect(URL, connect_timeout=5, allow_reconnect=False)
        try:
            return await step(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """A fresh stream and prefix; the stream is deleted afterwards (if it was created)."""
    tag = secrets.token_hex(6)
    stream, prefix = f"BASTION_TEST_{tag}", f"bastion-test.{tag}"
    yield stream, prefix

    async def drop(js: JetStreamContext) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)

    _admin(drop)


def _count(stream: str) -> int:
    async def count(js: JetStreamContext) -> int:
        return (await js.stream_info(stream)).state.messages

    return _admin(count)


def _same(a: Delivery, b: Delivery) -> bool:
    return a.files() == b.files()


def test_a_delivery_round_trips_with_chunks_over_max_payload(names: tuple[str, str]) -> None:
    stream, prefix = names
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    d = delivery(chunks=2, chunk_bytes=2 * MiB + 12345)  # each chunk > the 1 MiB max_payload
    assert not dest.delivered(FLOW, d.manifest_id)  # no stream yet: not delivered
    dest.deliver(d)
    assert dest.delivered(FLOW, d.manifest_id)
    expected = len(messages_of(d, PART_SIZE))
    assert expected == 3 + 2 * 3 + 1  # manifest, entry, proof; 3 parts per chunk; COMPLETE
    assert _count(stream) == dest.published == expected
    [back] = fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix)
    assert _same(back, d)


def test_redelivery_stores_nothing_more(names: tuple[str, str]) -> None:
    stream, prefix = names
    d, other = delivery(), delivery()
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    dest.deliver(d)
    first = _count(stream)
    dest.deliver(d)
    NatsDestination(URL, stream=stream, subject_prefix=prefix).deliver(d)  # another process
    assert _count(stream) == first == len(d.files())
    dest.deliver(other)
    got = list(fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix))
    assert [g.manifest_id for g in got] == [d.manifest_id, other.manifest_id]
    assert _same(got[0], d) and _same(got[1], other)


@pytest.mark.parametrize("k", [0, 1, 4, 6])  # 6 = every file but COMPLETE
def test_a_crash_after_k_messages_is_resumed_exactly_once(
    k: int, names: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, prefix = names
    d = delivery(chunks=3, chunk_bytes=MiB + 1)  # 2 parts per chunk: 10 messages
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    total = len(messages_of(d, PART_SIZE))
    crash = CrashAfter(k, dest._publish)
    monkeypatch.setattr(dest, "_publish", crash)
    with pytest.raises(Crash):
        dest.deliver(d)
    assert not dest.delivered(FLOW, d.manifest_id)
    assert list(fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix)) == []  # not yet
    monkeypatch.undo()
    retry = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    retry.deliver(d)
    assert retry.delivered(FLOW, d.manifest_id)
    assert retry.published == total - k  # resumed where the crash stopped
    assert _count(stream) == total
    [back] = fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix)
    assert _same(back, d)


def test_the_resume_does_not_depend_on_the_duplicate_window(
    names: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream forgets msg ids after its duplicate window; a destination down for longer
    than that must still not store a file twice."""
    stream, prefix = names

    async def create(js: JetStreamContext) -> None:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{prefix}.>"], duplicate_window=0.2)
        )

    _admin(create)
    d = delivery(chunks=2)
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    monkeypatch.setattr(dest, "_publish", CrashAfter(3, dest._publish))
    with pytest.raises(Crash):
        dest.deliver(d)
    monkeypatch.undo()
    time.sleep(0.6)  # let the window pass (waiting, not measuring)
    NatsDestination(URL, stream=stream, subject_prefix=prefix).deliver(d)
    assert _count(stream) == len(d.files())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(20)  # the bound: connect_timeout_s=2 per call, three calls
def test_a_server_that_is_down_fails_cleanly(names: tuple[str, str], tmp_path: Path) -> None:
    stream, prefix = names
    down = NatsDestination(
        f"nats://127.0.0.1:{_closed_port()}",
        stream=stream,
        subject_prefix=prefix,
        connect_timeout_s=2,
    )
    d = delivery()
    with pytest.raises(DestinationUnavailable, match="could not be reached within 2s"):
        down.deliver(d)
    with pytest.raises(DestinationUnavailable):
        down.delivered(FLOW, d.manifest_id)  # "cannot tell", never a guess
    with pytest.raises(DestinationUnavailable):
        list(fetch_deliveries(down.url, stream, FLOW, connect_timeout_s=2))
    up = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    assert not up.delivered(FLOW, d.manifest_id)
    up.deliver(d)  # the retry, once the destination is back
    assert _count(stream) == len(d.files())


@pytest.mark.timeout(30)  # the bound: connect_timeout_s=1
def test_a_server_that_never_answers_is_unavailable_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never sends INFO
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        dest = NatsDestination(f"nats://127.0.0.1:{port}", connect_timeout_s=1)
        with pytest.raises(DestinationUnavailable, match="within 1s"):
            dest.deliver(delivery())


def test_a_stream_that_does_not_take_the_subject_is_a_config_error(
    names: tuple[str, str],
) -> None:
    stream, prefix = names

    async def create(js: JetStreamContext) -> None:
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.other.>"]))

    _admin(create)
    d = delivery()
    with pytest.raises(ConfigError, match="does not take subject"):
        NatsDestination(URL, stream=stream, subject_prefix=prefix).deliver(d)
    assert _count(stream) == 0


def test_the_recipient_rebuilds_the_layout_and_verifies_it(
    names: tuple[str, str], custodian: Custodian, tmp_path: Path
) -> None:
    """End to end: a real signed, logged, sealed delivery through JetStream, rebuilt in a
    directory by the recipient and accepted by ``bastion egress verify``'s checks."""
    stream, prefix = names
    built = custodian.build(rows(7, deletes=1))
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    dest.deliver(built.delivery)
    out = tmp_path / "received"
    assert receive_nats(URL, stream, BUILT_FLOW, out, subject_prefix=prefix) == [built.manifest_id]
    assert receive_nats(URL, stream, BUILT_FLOW, out, subject_prefix=prefix) == []  # once
    path = DirectoryDestination(out).path_of(BUILT_FLOW, built.manifest_id)
    verified = verify_delivery(path, custodian.trust(), custodian.recipient)
    assert (verified.manifest_id, verified.chunks) == (
        built.manifest_id,
        len(built.delivery.chunks),
    )


def test_fetch_skips_what_the_recipient_has(names: tuple[str, str]) -> None:
    stream, prefix = names
    a, b = delivery(), delivery()
    dest = NatsDestination(URL, stream=stream, subject_prefix=prefix)
    dest.deliver(a)
    dest.deliver(b)
    got = fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix, skip={a.manifest_id})
    assert [g.manifest_id for g in got] == [b.manifest_id]
    assert list(fetch_deliveries(URL, stream, "another-flow", subject_prefix=prefix)) == []


def test_a_foreign_message_on_a_delivery_subject_is_refused_or_ignored(
    names: tuple[str, str],
) -> None:
    stream, prefix = names
    d = delivery()
    NatsDestination(URL, stream=stream, subject_prefix=prefix).deliver(d)
    subject = f"{prefix}.{FLOW}.{d.manifest_id}"

    async def publish(js: JetStreamContext) -> None:
        await js.publish(subject, b"no headers at all")  # not ours: passed over
        await js.publish(subject, b"x", headers={"Bastion-Manifest": "e" * 32})

    _admin(publish)
    with pytest.raises(InputError, match="not a part of a delivery file") as caught:
        list(fetch_deliveries(URL, stream, FLOW, subject_prefix=prefix))
    assert caught.value.field == "Bastion-File"
