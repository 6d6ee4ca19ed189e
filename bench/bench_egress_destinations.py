"""Egress destinations: delivery throughput (MB/s of delivery files) per destination.

One delivery of ``--chunks`` chunks of ``--chunk-mib`` MiB of opaque bytes (the destinations
never look inside; HPKE sealing is measured by the flow bench), delivered afresh (a new
manifest id) ``--repeat`` times to each destination:

* **disk**: the baseline, the same bytes written to one file and fsynced once;
* **files**: the directory destination (staging, a fsync per file, rename into place);
* **nats**: JetStream on 127.0.0.1:4222 (file storage; parts of < 1 MiB, each acknowledged
  before the next), on a throwaway stream deleted at the end;
* **http**: PUT per file to the receiver (``http_receiver``) served by uvicorn in this
  process (so client and server share one interpreter), which stages, fsyncs and renames.

    python bench/bench_egress_destinations.py --chunks 8 --chunk-mib 8 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nats
import uvicorn

from bastion.egress.delivery import Delivery
from bastion.egress.destinations.files import DirectoryDestination
from bastion.egress.destinations.http import HttpDestination
from bastion.egress.destinations.http_receiver import create_receiver_app
from bastion.egress.destinations.nats import NatsDestination

FLOW = "bench-flow"


def make_delivery(chunks: int, chunk_bytes: int, blob: bytes) -> Delivery:
    return Delivery(
        flow=FLOW,
        manifest_id=secrets.token_hex(16),
        envelope=b"{}",
        entry=b"{}",
        proof="proof\n",
        chunks=tuple(blob[:chunk_bytes] for _ in range(chunks)),
    )


def size_of(d: Delivery) -> int:
    return sum(len(b) for _, b in d.files())


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def disk_baseline(root: Path, d: Delivery) -> None:
    with open(root / secrets.token_hex(8), "wb") as f:
        for _, data in d.files():
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def serve(root: Path) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_receiver_app(root), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def drop_stream(url: str, stream: str) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--chunk-mib", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = ap.parse_args()
    chunk_bytes = int(args.chunk_mib * (1 << 20))
    blob = os.urandom(chunk_bytes)
    stream = f"BASTION_BENCH_{secrets.token_hex(4)}"
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "disk").mkdir()
        server, thread, url = serve(root / "http")
        targets: dict[str, Callable[[Delivery], None]] = {
            "disk": lambda d: disk_baseline(root / "disk", d),
            "files": DirectoryDestination(root / "files").deliver,
            "nats": NatsDestination(args.nats, stream=stream, subject_prefix="bench").deliver,
            "http": HttpDestination(url, timeout_s=60).deliver,
        }
        try:
            for name, deliver in targets.items():
                for _ in range(args.repeat):
                    d = make_delivery(args.chunks, chunk_bytes, blob)
                    mb = size_of(d) / 1e6
                    results.setdefault(name, []).append(mb / timed(lambda: deliver(d)))  # noqa: B023
                print(json.dumps({"destination": name, "mb_per_s": results[name]}), flush=True)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            drop_stream(args.nats, stream)
    mb = args.chunks * chunk_bytes / 1e6
    summary = {
        "delivery_mb": round(mb, 1),
        "chunks": args.chunks,
        "median_mb_per_s": {k: round(statistics.median(v), 1) for k, v in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
