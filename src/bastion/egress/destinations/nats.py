"""The NATS JetStream destination, and the reader a recipient rebuilds deliveries with.

Every message of one delivery goes to one subject, ``<prefix>.<flow>.<manifest_id>``, in
layout order, ``COMPLETE`` last. A file larger than the server's ``max_payload`` (1 MiB by
default; a chunk is often more) is split into parts, each its own message. Headers:

    Nats-Msg-Id       <manifest_id>/<name>   (part 0), <manifest_id>/<name>/<i> (part i > 0)
    Bastion-Flow      the flow
    Bastion-Manifest  the manifest id
    Bastion-File      the file name (COMPLETE for the marker)
    Bastion-Part      i, from 0
    Bastion-Parts     how many parts the file has

Why a subject per delivery rather than one per flow: it makes the two questions a retry asks
exact and cheap, whatever JetStream's duplicate window is (2 minutes by default, long gone
when a destination was down for an hour):

- ``delivered``: the last message on the delivery's subject (a server-side index, one
  request) is ``COMPLETE``. A message-id lookup does not exist in JetStream, and a KV marker
  would be a second write that can disagree with the stream the recipient actually reads.
- resuming: messages are published one at a time, each acknowledged before the next, so
  what a cut-short delivery left in the stream is a prefix of its messages. The number of
  messages on the subject says where to resume; the last one's Nats-Msg-Id is checked to be
  the one expected there (if not, everything is republished and the msg ids deduplicate).

Within the duplicate window the msg ids also make two racing publishers store one copy.
The runner is synchronous, so this module is a sync facade over nats-py's asyncio client;
every call is bounded (connect, each request), and an unreachable server is
:class:`DestinationUnavailable` within ``connect_timeout_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from bastion.egress.destinations.common import (
    COMPLETE,
    DestinationUnavailable,
    check_file_name,
    check_flow,
    check_manifest_id,
    layout,
)
from bastion.errors import ConfigError, InputError

if TYPE_CHECKING:
    from bastion.egress.delivery import Delivery

T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "BASTION_EGRESS"
DEFAULT_PREFIX = "bastion.egress"
# Room for the headers within the server's max_payload (which counts headers and body).
_HEADER_ROOM = 4096
# The largest part: what the default max_payload (1 MiB) carries with the headers.
PART_SIZE = (1 << 20) - _HEADER_ROOM
_NETWORK_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _quiet(_: Exception) -> None:
    """nats-py logs every connection error itself; the caller gets one clear error instead."""


async def _connect(url: str, timeout_s: float) -> Client:
    try:
        # max_reconnect_attempts=0 would mean "forever" in nats-py: 1, and no reconnect.
        return await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=max(1, round(timeout_s)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=_quiet,
            ),
            timeout_s,
        )
    except _NETWORK_ERRORS as exc:
        raise DestinationUnavailable(
            f"the NATS server at {url} could not be reached within {timeout_s:g}s "
            f"({type(exc).__name__})"
        ) from None


def subject_of(prefix: str, flow: str, manifest_id: str) -> str:
    return f"{prefix}.{check_flow(flow)}.{check_manifest_id(manifest_id)}"


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one token at least)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True)
class Message:
    headers: dict[str, str]
    payload: bytes


def messages_of(delivery: Delivery, part_size: int) -> list[Message]:
    """The delivery as messages, in order: each file in parts of at most ``part_size``."""
    out = []
    mid = delivery.manifest_id
    for name, data in layout(delivery):
        parts = max(1, -(-len(data) // part_size))
        for i in range(parts):
            out.append(
                Message(
                    {
                        "Nats-Msg-Id": f"{mid}/{name}" + (f"/{i}" if i else ""),
                        "Bastion-Flow": delivery.flow,
                        "Bastion-Manifest": mid,
                        "Bastion-File": name,
                        "Bastion-Part": str(i),
                        "Bastion-Parts": str(parts),
                    },
                    data[i * part_size : (i + 1) * part_size],
                )
            )
    return out


class NatsDestination:
    """Deliveries to a JetStream stream (created, file storage, if missing)."""

    name = "nats"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_PREFIX,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        part_size: int = PART_SIZE,
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = subject_prefix
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.part_size = part_size
        self.published = 0  # messages stored by this object (the tests count them)

    def __repr__(self) -> str:
        return f"NatsDestination({self.url!r}, stream={self.stream!r})"

    # -- the protocol ------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        self._session(lambda js, nc: self._deliver(js, nc, delivery))

    def delivered(self, flow: str, manifest_id: str) -> bool:
        subject = subject_of(self.prefix, flow, manifest_id)
        return self._session(lambda js, nc: self._is_complete(js, subject))

    # -- the steps ---------------------------------------------------------------------------

    def _session(self, step: Callable[[JetStreamContext, Client], Awaitable[T]]) -> T:
        async def main() -> T:
            nc = await _connect(self.url, self.connect_timeout_s)
            try:
                return await step(nc.jetstream(timeout=self.request_timeout_s), nc)
            except _NETWORK_ERRORS as exc:
                # A request the server calls bad (a subject bound to another stream, a
                # message over a limit) will not succeed on retry: a configuration error.
                if isinstance(exc, nats.js.errors.APIError) and exc.code == 400:
                    raise ConfigError(
                        f"the NATS stream {self.stream!r} at {self.url} refused the delivery: "
                        f"{exc.description} (code {exc.code}, err_code {exc.err_code})"
                    ) from None
                raise DestinationUnavailable(
                    f"the NATS destination {self.url} (stream {self.stream!r}) failed "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            finally:
                await nc.close()

        return _run(main)

    async def _is_complete(self, js: JetStreamContext, subject: str) -> bool:
        try:
            last = await js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError:  # no such stream, or nothing on the subject
            return False
        return (last.headers or {}).get("Bastion-File") == COMPLETE

    async def _ensure_stream(self, js: JetStreamContext, subject: str) -> int:
        """Create the stream if missing; return the largest message it accepts."""
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                info = await js.add_stream(
                    StreamConfig(
                        name=self.stream,
                        subjects=[f"{self.prefix}.>"],
                        storage=StorageType.FILE,
                    )
                )
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(self.stream)  # created meanwhile, or a clash below
        subjects = info.config.subjects or []
        if not any(_subject_matches(p, subject) for p in subjects):
            raise ConfigError(
                f"the NATS stream {self.stream!r} does not take subject {subject!r} "
                f"(its subjects: {', '.join(subjects) or 'none'})"
            )
        limit = info.config.max_msg_size
        return limit if limit is not None and limit > 0 else 1 << 62

    async def _deliver(self, js: JetStreamContext, nc: Client, delivery: Delivery) -> None:
        subject = subject_of(self.prefix, delivery.flow, delivery.manifest_id)
        stream_limit = await self._ensure_stream(js, subject)
        # A fixed part size (unless the server takes less): a retry against a server whose
        # limit was raised splits files as the first attempt did, so the msg ids match.
        part_size = min(self.part_size, min(nc.max_payload, stream_limit) - _HEADER_ROOM)
        if part_size < 1024:
            raise ConfigError(
                f"the NATS server at {self.url} takes messages of {nc.max_payload} bytes "
                f"at most: too small to carry a delivery"
            )
        messages = messages_of(delivery, part_size)
        if await self._is_complete(js, subject):
            return
        start = await self._resume_at(js, subject, messages)
        for message in messages[start:]:
            await self._publish(js, subject, message)

    async def _resume_at(self, js: JetStreamContext, subject: str, messages: list[Message]) -> int:
        """How many of ``messages`` are already in the stream (see the module docstring)."""
        info = await js.stream_info(self.stream, subjects_filter=subject)
        stored = (info.state.subjects or {}).get(subject, 0)
        if stored == 0 or stored > len(messages):
            return 0
        last = await js.get_last_msg(self.stream, subject)
        expected = messages[stored - 1].headers["Nats-Msg-Id"]
        return stored if (last.headers or {}).get("Nats-Msg-Id") == expected else 0

    async def _publish(self, js: JetStreamContext, subject: str, message: Message) -> None:
        ack = await js.publish(
            subject, message.payload, headers=dict(message.headers), stream=self.stream
        )
        if not ack.duplicate:
            self.published += 1


# ---- the receiving side ------------------------------------------------------------------------


@dataclass
class _Pending:
    """One delivery's messages as they arrive: name -> part -> bytes."""

    parts: dict[str, dict[int, bytes]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def add(self, headers: dict[str, str], payload: bytes) -> None:
        msg_id = headers.get("Nats-Msg-Id", "")
        if msg_id in self.seen:  # a duplicate stored outside the dedupe window: first wins
            return
        self.seen.add(msg_id)
        try:
            name = check_file_name(headers["Bastion-File"])
            part, parts = int(headers["Bastion-Part"]), int(headers["Bastion-Parts"])
        except (KeyError, ValueError):
            raise InputError(
                f"the NATS message {msg_id!r} is not a part of a delivery file",
                field="Bastion-File",
            ) from None
        if not 0 <= part < parts or self.counts.setdefault(name, parts) != parts:
            raise InputError(
                f"the NATS message {msg_id!r} has inconsistent part headers", field="Bastion-Part"
            )
        self.parts.setdefault(name, {})[part] = payload

    def files(self) -> dict[str, bytes]:
        out = {}
        for name, parts in self.parts.items():
            if sorted(parts) != list(range(self.counts[name])):
                raise InputError(f"the NATS delivery is missing parts of {name}", field="file")
            out[name] = b"".join(parts[i] for i in range(self.counts[name]))
        return out


def fetch_deliveries(
    url: str,
    stream: str,
    flow: str,
    *,
    subject_prefix: str = DEFAULT_PREFIX,
    skip: Container[str] = (),
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 10.0,
    batch: int = 64,
) -> Iterator[Delivery]:
    """Every complete delivery of ``flow`` in ``stream``, in the order they completed.

    Reads with an ephemeral, unacknowledged consumer (nothing is removed from the stream),
    so it can be run again; ``skip`` names manifest ids already received, whose messages are
    dropped as they pass instead of being held. A delivery without ``COMPLETE`` yet (still
    arriving, or cut short and not yet retried) is not yielded. Only the files held for
    deliveries not complete yet stay in memory.
    """
    from bastion.egress.delivery import Delivery

    check_flow(flow)
    loop = asyncio.new_event_loop()
    nc: Client | None = None
    sub: JetStreamContext.PullSubscription | None = None

    def run(coro: Awaitable[T]) -> T:
        return loop.run_until_complete(coro)

    try:
        nc = run(_connect(url, connect_timeout_s))
        js = nc.jetstream(timeout=request_timeout_s)
        try:
            sub = run(
                js.pull_subscribe(
                    f"{subject_prefix}.{flow}.*",
                    stream=stream,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.NONE,
                        inactive_threshold=60.0,
                    ),
                )
            )
            pending_total = run(sub.consumer_info()).num_pending or 0
        except nats.js.errors.NotFoundError:
            return  # no stream: nothing delivered yet
        pending: dict[str, _Pending] = {}
        while pending_total > 0:
            try:
                msgs = run(sub.fetch(batch, timeout=request_timeout_s))
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                pending_total = msg.metadata.num_pending
                headers = dict(msg.headers or {})
                mid = headers.get("Bastion-Manifest", "")
                if mid in skip or not mid:
                    continue
                check_manifest_id(mid)
                delivery = pending.setdefault(mid, _Pending())
                delivery.add(headers, msg.data)
                if headers.get("Bastion-File") == COMPLETE:
                    files = pending.pop(mid).files()
                    yield Delivery.from_files(files, flow=flow, manifest_id=mid)
    except _NETWORK_ERRORS as exc:
        raise DestinationUnavailable(
            f"reading {flow!r} from the NATS stream {stream!r} at {url} failed "
            f"({type(exc).__name__})"
        ) from None
    finally:
        if nc is not None:
            if sub is not None:  # the server would drop it after inactive_threshold anyway
                with contextlib.suppress(*_NETWORK_ERRORS):
                    run(js.delete_consumer(stream, run(sub.consumer_info()).name))
            run(nc.close())
        loop.close()


def receive_nats(
    url: str,
    stream: str,
    flow: str,
    out: Path,
    *,
    subject_prefix: str = DEFAULT_PREFIX,
    connect_timeout_s: float = 5.0,
) -> list[str]:
    """Rebuild ``flow``'s deliveries under ``out`` (``<out>/<flow>/<manifest_id>/``, written
    as the directory destination writes them). Returns the manifest ids newly written;
    those already there are skipped without being held in memory."""
    from bastion.egress.destinations.files import DirectoryDestination

    target = DirectoryDestination(out)
    have = _existing(out, flow)
    written = []
    for delivery in fetch_deliveries(
        url,
        stream,
        flow,
        subject_prefix=subject_prefix,
        skip=have,
        connect_timeout_s=connect_timeout_s,
    ):
        if not target.delivered(flow, delivery.manifest_id):
            target.deliver(delivery)
            written.append(delivery.manifest_id)
    return written


def _existing(out: Path, flow: str) -> set[str]:
    from bastion.egress.destinations.files import is_complete

    base = out / check_flow(flow)
    if not base.is_dir():
        return set()
    return {p.name for p in base.iterdir() if len(p.name) == 32 and is_complete(out, flow, p.name)}
