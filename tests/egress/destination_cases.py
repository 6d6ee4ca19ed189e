"""Deliveries for the destination tests: real Delivery objects with opaque bytes (the
destinations never look inside), and a way to cut a delivery short after k files."""

from __future__ import annotations

import os
import secrets

from bastion.egress.delivery import Delivery

FLOW = "video-stats"


def delivery(chunks: int = 3, chunk_bytes: int = 1000, *, flow: str = FLOW) -> Delivery:
    return Delivery(
        flow=flow,
        manifest_id=secrets.token_hex(16),
        envelope=b'{"payloadType": "application/vnd.in-toto+json"}',
        entry=b'{"type": "egress.manifest"}',
        proof="c2sp.org/tlog-proof@v1\n",
        chunks=tuple(os.urandom(chunk_bytes) for _ in range(chunks)),
    )


class Crash(Exception):
    """The process dying mid-delivery, as an exception injected after k files."""


class CrashAfter:
    """Wraps a per-file step: lets ``k`` calls through, then raises :class:`Crash`."""

    def __init__(self, k: int, step: object) -> None:
        self.k = k
        self.step = step
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        if self.calls >= self.k:
            raise Crash(f"killed after {self.k} files")
        self.calls += 1
        return self.step(*args, **kwargs)  # type: ignore[operator]
