"""The auditor's verifier against static tiles built here (served through httpx.MockTransport)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import IntegrityError, LedgerUnavailable
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner, QuorumError
from bastion.ledger.merkle import CompactRange, leaf_hash
from bastion.ledger.note import NoteError, NoteSigner
from bastion.ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    encode_entry_bundle,
    entries_path,
    tile_path,
)
from bastion.ledger.verifier import (
    ConsistencyError,
    LogVerifier,
    VerificationError,
    log_prefix,
)

ORIGIN = "log.example/bastion"
LOG = NoteSigner.generate(ORIGIN)
WITNESS = CosignatureSigner("witness.example", Ed25519PrivateKey.generate())


class StaticLog:
    """A tiny tlog-tiles log: tiles are written as the sequencer would, from CompactRange."""

    def __init__(self, entries: list[bytes], signer: NoteSigner = LOG) -> None:
        self.entries: list[bytes] = []
        self.signer = signer
        self.nodes: dict[tuple[int, int], bytes] = {}  # (tree level, index) of tile levels
        self.files: dict[str, bytes] = {}
        self.range = CompactRange()
        self.checkpoint_note = ""
        self.append(entries)

    def append(self, entries: list[bytes], cosign: bool = False) -> None:
        for e in entries:
            self.entries.append(e)
            for level, index, h in self.range.append(leaf_hash(e)):
                if level % TILE_HEIGHT == 0:
                    self.nodes[(level, index)] = h
        self.publish(cosign)

    def publish(self, cosign: bool = False) -> None:
        """Write the tiles and bundles of the current size (old partials stay) and sign."""
        size = self.range.size
        level = 0
        while size >> (TILE_HEIGHT * level):
            count = size >> (TILE_HEIGHT * level)
            for t in range((count - 1) // TILE_WIDTH + 1):
                lo, hi = t * TILE_WIDTH, min((t + 1) * TILE_WIDTH, count)
                data = b"".join(self.nodes[(TILE_HEIGHT * level, i)] for i in range(lo, hi))
                self.files[tile_path(level, t, hi - lo)] = data
                if level == 0:
                    self.files[entries_path(t, hi - lo)] = encode_entry_bundle(self.entries[lo:hi])
            level += 1
        cp = Checkpoint(ORIGIN, size, self.range.root())
        extra = [WITNESS.cosign(cp.body(), 1_700_000_000)] if cosign else []
        self.checkpoint_note = sign_checkpoint(cp, self.signer, extra)
        self.files["checkpoint"] = self.checkpoint_note.encode()


def _entries(n: int, start: int = 0, tag: str = "e") -> list[bytes]:
    return [f'{{"{tag}":{i},"pad":"{"x" * (i % 50)}"}}'.encode() for i in range(start, start + n)]


class Server:
    def __init__(self, log: StaticLog) -> None:
        self.log = log
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self.hide: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert path.startswith("/log/")
        rel = path[len("/log/") :]
        self.requests.append(rel)
        if self.fail_with is not None:
            return httpx.Response(self.fail_with)
        data = self.log.files.get(rel)
        if data is None or rel in self.hide:
            return httpx.Response(404)
        return httpx.Response(200, content=data)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def _verifier(server: Server, state: Path, **kw: object) -> LogVerifier:
    return LogVerifier(
        "http://log.test/",
        LOG.vkey,
        state,
        http=server.client(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("n", [0, 1, 2, 255, 256, 257, 600, 65536 + 300])
def test_full_verification(tmp_path: Path, n: int) -> None:
    log = StaticLog(_entries(n))
    server = Server(log)
    seen: list[tuple[int, int]] = []
    result = _verifier(server, tmp_path).verify(progress=lambda d, t: seen.append((d, t)))
    assert result.size == n
    assert result.root_hash == log.range.root()
    assert result.entries_checked == n
    assert result.previous_size is None
    assert result.bundles_fetched == (n + 255) // 256
    if n:
        assert seen[-1][0] == seen[-1][1] == result.tiles_fetched + result.bundles_fetched
    state = json.loads(next(tmp_path.iterdir()).read_text())
    assert state["size"] == n and state["checkpoint"] == log.checkpoint_note


def test_prefix_handling() -> None:
    assert log_prefix("http://h:1") == "http://h:1/log/"
    assert log_prefix("http://h:1/") == "http://h:1/log/"
    assert log_prefix("http://h:1/log") == "http://h:1/log/"
    assert log_prefix("http://h:1/log/") == "http://h:1/log/"


def test_growth_checks_consistency_and_incremental_fetches_less(tmp_path: Path) -> None:
    log = StaticLog(_entries(700))
    server = Server(log)
    _verifier(server, tmp_path).verify()
    log.append(_entries(1000, start=700))
    full = _verifier(server, tmp_path / "fresh").verify()  # a new auditor: full check
    assert full.previous_size is None and full.entries_checked == 1700
    server.requests.clear()
    inc = _verifier(server, tmp_path).verify(incremental=True)
    assert inc.incremental and inc.previous_size == 700 and inc.size == 1700
    assert inc.root_hash == full.root_hash
    # tiles 0/000 and 0/001 were full at 700 and are immutable: not fetched again
    assert "tile/0/000" not in server.requests and "tile/entries/001" not in server.requests
    assert inc.entries_checked == 1700 - 512
    again = _verifier(server, tmp_path).verify(incremental=True)
    assert (again.size, again.entries_checked, again.bundles_fetched) == (1700, 0, 0)


def test_tampered_entry_detected(tmp_path: Path) -> None:
    log = StaticLog(_entries(300))
    path = entries_path(0)
    data = bytearray(log.files[path])
    data[10] ^= 1
    log.files[path] = bytes(data)
    with pytest.raises(VerificationError, match="does not hash to its level-0 tile"):
        _verifier(Server(log), tmp_path).verify()
    assert list(tmp_path.iterdir()) == []  # nothing stored on failure


def test_tampered_entry_and_tile_together_detected_by_root(tmp_path: Path) -> None:
    # A consistent rewrite of entry and tile still cannot match the signed root.
    log = StaticLog(_entries(300))
    entries = list(log.entries[:256])
    entries[7] = b'{"forged":true}'
    log.files[entries_path(0)] = encode_entry_bundle(entries)
    log.files[tile_path(0, 0)] = b"".join(leaf_hash(e) for e in entries)
    with pytest.raises(VerificationError):
        _verifier(Server(log), tmp_path).verify()


@pytest.mark.parametrize(
    ("path", "mutate"),
    [
        (tile_path(0, 1, 44), lambda d: d[:-1]),  # truncated partial tile
        (tile_path(0, 0), lambda d: d[:32] + bytes(32) + d[64:]),
        (tile_path(1, 0, 1), lambda d: bytes(32)),  # level-1 hash not the tile root
        (entries_path(1, 44), lambda d: d[:-3]),  # truncated bundle
        (entries_path(1, 44), lambda d: d + b"\x00\x01x"),  # one entry too many
    ],
)
def test_tampered_tiles_detected(
    tmp_path: Path, path: str, mutate: Callable[[bytes], bytes]
) -> None:
    log = StaticLog(_entries(300))
    log.files[path] = mutate(log.files[path])
    with pytest.raises(VerificationError):
        _verifier(Server(log), tmp_path).verify()


def test_tampered_checkpoint_and_wrong_key(tmp_path: Path) -> None:
    log = StaticLog(_entries(10))
    good = log.files["checkpoint"]
    log.files["checkpoint"] = good.replace(b"\n10\n", b"\n11\n")
    with pytest.raises(NoteError):
        _verifier(Server(log), tmp_path).verify()
    log.files["checkpoint"] = good
    impostor = NoteSigner.generate(ORIGIN)
    with pytest.raises(NoteError):
        LogVerifier("http://x/log/", impostor.vkey, tmp_path, http=Server(log).client()).verify()
    # signed by an attacker who serves consistent tiles: rejected by the key, not the tiles
    forged = StaticLog(_entries(10, tag="f"), signer=impostor)
    with pytest.raises(NoteError):
        _verifier(Server(forged), tmp_path).verify()


def test_shrunk_log_detected(tmp_path: Path) -> None:
    log = StaticLog(_entries(600))
    _verifier(Server(log), tmp_path).verify()
    smaller = StaticLog(_entries(500))
    with pytest.raises(ConsistencyError, match="shrank"):
        _verifier(Server(smaller), tmp_path).verify()


def test_same_size_fork_detected(tmp_path: Path) -> None:
    _verifier(Server(StaticLog(_entries(600))), tmp_path).verify()
    other = StaticLog(_entries(600, tag="g"))
    with pytest.raises(ConsistencyError, match="forked"):
        _verifier(Server(other), tmp_path).verify()


@pytest.mark.parametrize("incremental", [False, True])
def test_rewritten_history_detected(tmp_path: Path, incremental: bool) -> None:
    original = _entries(600)
    _verifier(Server(StaticLog(original)), tmp_path).verify()
    rewritten = list(original)
    rewritten[3] = b'{"rewritten":true}'  # inside a full, "immutable" tile
    forked = StaticLog(rewritten + _entries(400, start=600))
    with pytest.raises(ConsistencyError, match="rewritten"):
        _verifier(Server(forked), tmp_path).verify(incremental=incremental)
    state = json.loads(next(tmp_path.iterdir()).read_text())
    assert state["size"] == 600  # the forked checkpoint was not stored


def test_corrupt_or_forged_state_file(tmp_path: Path) -> None:
    log = StaticLog(_entries(20))
    _verifier(Server(log), tmp_path).verify()
    state_file = next(tmp_path.iterdir())
    state_file.write_text("{not json")
    with pytest.raises(VerificationError, match="unreadable"):
        _verifier(Server(log), tmp_path).verify()
    record = {"checkpoint": log.checkpoint_note.replace("\n20\n", "\n21\n")}
    state_file.write_text(json.dumps(record))
    with pytest.raises(VerificationError, match="not valid"):
        _verifier(Server(log), tmp_path).verify()


def test_witness_quorum(tmp_path: Path) -> None:
    log = StaticLog(_entries(5))
    log.publish(cosign=True)
    server = Server(log)
    result = _verifier(server, tmp_path, witness_vkeys=[WITNESS.vkey], quorum=1).verify()
    assert [c.name for c in result.cosigners] == ["witness.example"]
    log.publish(cosign=False)
    with pytest.raises(QuorumError):
        _verifier(server, tmp_path, witness_vkeys=[WITNESS.vkey], quorum=1).verify()


def test_partial_tile_fallback_to_full(tmp_path: Path) -> None:
    # The log grew past the tile boundary; its old partial tile is gone but the checkpoint
    # still names the old size: the spec lets clients use the full tile's prefix.
    log = StaticLog(_entries(300))
    note = log.files["checkpoint"]
    log.append(_entries(300, start=300))
    log.files["checkpoint"] = note
    server = Server(log)
    server.hide = {tile_path(0, 1, 44), entries_path(1, 44)}
    result = _verifier(server, tmp_path).verify()
    assert result.size == 300
    assert tile_path(0, 1) in server.requests and entries_path(1) in server.requests


def test_unavailable_log(tmp_path: Path) -> None:
    server = Server(StaticLog(_entries(3)))
    server.fail_with = 503
    with pytest.raises(LedgerUnavailable, match="HTTP 503"):
        _verifier(server, tmp_path).verify()
    server.fail_with = None
    server.hide = {entries_path(0, 3)}
    with pytest.raises(LedgerUnavailable, match="HTTP 404"):
        _verifier(server, tmp_path).verify()
    assert issubclass(VerificationError, IntegrityError)


def test_verifier_imports_no_server_code() -> None:
    # The auditor's client must stand alone: formats, httpx and cryptography only.
    import subprocess
    import sys

    code = (
        "import sys, bastion.ledger.verifier, bastion.ledger.tlogproof;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette',"
        " 'psycopg', 'sqlite3') or m.startswith(('bastion.store', 'bastion.gateway',"
        " 'bastion.vault', 'bastion.ledger.storage', 'bastion.ledger.sequencer'))];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


class _WireHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive over a real socket, answering in every framing the verifier's own
    client must read: Content-Length, chunked, gzip, and closing after some responses."""

    protocol_version = "HTTP/1.1"
    files: ClassVar[dict[str, bytes]] = {}
    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        rel = self.path.removeprefix("/log/")
        self.served.append(rel)
        data = self.files.get(rel)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        n = len(self.served)
        if rel.startswith("tile/entries/") and "gzip" in self.headers.get("Accept-Encoding", ""):
            data = gzip.compress(data)
            self.send_header("Content-Encoding", "gzip")
        if n % 3 == 0:  # chunked, in uneven pieces
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 1000):
                piece = data[i : i + 1000]
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if n % 7 == 0:  # this connection ends after this response
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_the_verifiers_own_http_client_reads_every_framing(tmp_path: Path) -> None:
    log = StaticLog(_entries(700))
    handler = type("H", (_WireHandler,), {"files": log.files, "served": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with LogVerifier(url, LOG.vkey, tmp_path, workers=2, processes=1) as verifier:
            result = verifier.verify()
        assert result.size == result.entries_checked == 700
        assert result.root_hash == log.range.root()
        assert len(handler.served) >= result.tiles_fetched + result.bundles_fetched + 1
        # A tampered bundle is still caught, whatever the framing.
        log.files[entries_path(1)] = log.files[entries_path(1)].replace(b'"e":300', b'"e":301')
        with (
            LogVerifier(url, LOG.vkey, tmp_path / "b", workers=2, processes=1) as verifier,
            pytest.raises(VerificationError, match="does not hash"),
        ):
            verifier.verify()
    finally:
        server.shutdown()
        server.server_close()
