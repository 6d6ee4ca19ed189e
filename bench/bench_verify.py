"""Benchmark: full verification of a 1,000,000-entry tiled log by the auditor's verifier.

Builds the log's tiles and entry bundles (entries of about 100 bytes) in a temporary directory,
serves them with Python's stock ``http.server`` (HTTP/1.1 keep-alive) in a separate process on
127.0.0.1, and times
``LogVerifier.verify()`` end to end: checkpoint signature, every bundle against its level-0
tile, every higher tile, the root, then an incremental re-check. The same run also times

- the bare SHA-256 loop over the same entries (the RFC 6962 leaf hashes alone; best of three,
  measured right before each verification it is the baseline of, as the machine is shared),
  and
- the same verification reading the files directly (no HTTP), to separate transport cost:
  ``file_reads`` with the verifier's own ``file://`` reader (what an auditor of a mirrored
  static-files log uses), and ``file_reads_httpx_mock`` through an httpx client whose
  transport reads the files (how this was measured before the ``file://`` reader existed).

``--runs N`` repeats the whole measurement N times and reports each run, the median and the
spread. The harness runs an older verifier too (without ``file://`` its file reads go through
the httpx mock), so before and after can be measured with the same harness:
``PYTHONPATH=<old checkout>/src python bench/bench_verify.py --runs 5``.

Prints one JSON summary. Usage: ``python bench/bench_verify.py [--entries N] [--workers W]``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.merkle import leaf_hash, root_from_leaf_hashes
from bastion.ledger.note import NoteSigner
from bastion.ledger.tiles import TILE_WIDTH, encode_entry_bundle, entries_path, tile_path
from bastion.ledger.verifier import LogVerifier

ORIGIN = "bench.example/log"


def make_entries(n: int) -> list[bytes]:
    """Entries of about 100 bytes, shaped like the log's canonical-JSON events."""
    out = []
    for i in range(n):
        head = f'{{"actor":"svc-{i % 97}","at":"2026-01-01T00:00:00Z","i":{i},"pad":"'
        out.append((head + "x" * max(0, 96 - len(head)) + '"}').encode())
    return out


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / "log" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_log(root: Path, entries: list[bytes], signer: NoteSigner) -> bytes:
    """Write every tile, bundle and the signed checkpoint; return the root hash."""
    level_hashes: list[bytes] = []
    for t in range(0, len(entries), TILE_WIDTH):
        chunk = entries[t : t + TILE_WIDTH]
        leaves = [leaf_hash(e) for e in chunk]
        write(root, entries_path(t // TILE_WIDTH, len(chunk)), encode_entry_bundle(chunk))
        write(root, tile_path(0, t // TILE_WIDTH, len(chunk)), b"".join(leaves))
        if len(chunk) == TILE_WIDTH:
            level_hashes.append(root_from_leaf_hashes(leaves))
    level = 1
    while level_hashes:
        nxt = []
        for t in range(0, len(level_hashes), TILE_WIDTH):
            chunk = level_hashes[t : t + TILE_WIDTH]
            write(root, tile_path(level, t // TILE_WIDTH, len(chunk)), b"".join(chunk))
            if len(chunk) == TILE_WIDTH:
                nxt.append(root_from_leaf_hashes(chunk))
        level_hashes, level = nxt, level + 1
    # The root is computed independently of the tiles, straight from the entries.
    root_hash = root_from_leaf_hashes([leaf_hash(e) for e in entries])
    cp = Checkpoint(ORIGIN, len(entries), root_hash)
    write(root, "checkpoint", sign_checkpoint(cp, signer).encode())
    return root_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _KeepAliveHandler(SimpleHTTPRequestHandler):
    """Stock static file handler, with HTTP/1.1 keep-alive and Nagle off (as any CDN has)."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_server(directory: str, port: int) -> None:
    handler = functools.partial(_KeepAliveHandler, directory=directory)
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


def serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Serve `root` from a separate process, so the server does not share our GIL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/log/checkpoint", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("http.server did not start")


def file_transport(root: Path) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        path = root / request.url.path.lstrip("/")
        if not path.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=path.read_bytes())

    return httpx.MockTransport(handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        run_server(args.serve, args.port)
        return

    runs = [measure(args.entries, args.workers) for _ in range(args.runs)]
    if len(runs) == 1:
        print(json.dumps(runs[0], indent=2))
        return
    keys = [
        ("sha256_leaf_loop_s",),
        ("http", "full_verify_s"),
        ("http", "ratio_to_sha256_loop"),
        ("file_reads", "full_verify_s"),
        ("file_reads", "ratio_to_sha256_loop"),
        ("file_reads_httpx_mock", "ratio_to_sha256_loop"),
    ]
    summary: dict[str, object] = {"runs": runs}
    for key in keys:
        values = sorted(_dig(run, key) for run in runs)
        summary[".".join(key)] = {
            "median": statistics.median(values),
            "min": values[0],
            "max": values[-1],
        }
    print(json.dumps(summary, indent=2))


def _dig(run: dict[str, object], key: tuple[str, ...]) -> float:
    value: object = run
    for part in key:
        assert isinstance(value, dict)
        value = value[part]
    assert isinstance(value, int | float)
    return float(value)


def sha_loop_s(entries: list[bytes]) -> float:
    """The baseline: the bare RFC 6962 leaf-hash loop over the entries, best of three (the
    machine is shared; each is measured right before the verification it is compared with)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for e in entries:
            hashlib.sha256(b"\x00" + e).digest()
        best = min(best, time.perf_counter() - t0)
    return best


def has_file_reader() -> bool:
    """Whether this LogVerifier reads file:// itself (so the harness also runs on older ones)."""
    return "processes" in inspect.signature(LogVerifier.__init__).parameters


def measure(n: int, workers: int) -> dict[str, object]:
    entries = make_entries(n)
    signer = NoteSigner.generate(ORIGIN)

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        root = Path(tmp) / "www"
        t0 = time.perf_counter()
        root_hash = build_log(root, entries, signer)
        build_s = time.perf_counter() - t0

        proc, url = serve(root)
        try:
            sha_http_s = sha_loop_s(entries)
            state = Path(tmp) / "state-http"
            with LogVerifier(url, signer.vkey, state, workers=workers) as v:
                http_full = v.verify()
            with LogVerifier(url, signer.vkey, state, workers=workers) as v:
                http_incr = v.verify(incremental=True)
        finally:
            proc.terminate()
            proc.wait()
        assert http_full.root_hash == root_hash and http_full.entries_checked == n

        client = httpx.Client(transport=file_transport(root))
        sha_mock_s = sha_loop_s(entries)
        v = LogVerifier("http://files", signer.vkey, Path(tmp) / "state-mock", http=client)
        mock_full = v.verify()
        client.close()

        if has_file_reader():
            sha_file_s = sha_loop_s(entries)
            with LogVerifier(f"file://{root}/log", signer.vkey, Path(tmp) / "state-file") as v:
                file_full = v.verify()
            assert file_full.root_hash == root_hash
        else:  # before the file:// reader, files were read through the httpx mock
            sha_file_s, file_full = sha_mock_s, mock_full

    return {
        "benchmark": "ledger full verification (bastion ledger verify)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "entries": n,
        "entry_bytes_avg": 100,
        "workers": workers,
        "build_tiles_s": round(build_s, 2),
        "sha256_leaf_loop_s": round(sha_http_s, 3),
        "http": {
            "full_verify_s": round(http_full.elapsed_s, 2),
            "entries_per_s": round(n / http_full.elapsed_s),
            "requests": http_full.tiles_fetched + http_full.bundles_fetched + 1,
            "mb_fetched": round(http_full.bytes_fetched / 1e6, 1),
            "ratio_to_sha256_loop": round(http_full.elapsed_s / sha_http_s, 1),
            "incremental_noop_s": round(http_incr.elapsed_s, 3),
        },
        "file_reads": {
            "full_verify_s": round(file_full.elapsed_s, 2),
            "entries_per_s": round(n / file_full.elapsed_s),
            "sha256_leaf_loop_s": round(sha_file_s, 3),
            "ratio_to_sha256_loop": round(file_full.elapsed_s / sha_file_s, 1),
        },
        "file_reads_httpx_mock": {
            "full_verify_s": round(mock_full.elapsed_s, 2),
            "sha256_leaf_loop_s": round(sha_mock_s, 3),
            "ratio_to_sha256_loop": round(mock_full.elapsed_s / sha_mock_s, 1),
        },
    }


if __name__ == "__main__":
    main()
