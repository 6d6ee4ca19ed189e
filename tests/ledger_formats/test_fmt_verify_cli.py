"""`bastion ledger verify` / `verify-proof` over a real local HTTP server, without a home."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.merkle import CompactRange, inclusion_proof, leaf_hash, root_from_leaf_hashes
from bastion.ledger.note import NoteSigner
from bastion.ledger.tiles import TILE_WIDTH, encode_entry_bundle, entries_path, tile_path
from bastion.ledger.tlogproof import build_proof

ORIGIN = "cli.example/log"
LOG = NoteSigner.generate(ORIGIN)
WITNESS = CosignatureSigner("w.example", Ed25519PrivateKey.generate())


def _files(entries: list[bytes]) -> dict[str, bytes]:
    """Static tiles for a log of < 65536 entries (levels 0 and 1)."""
    files: ClassVar[dict[str, bytes]] = {}
    leaves = [leaf_hash(e) for e in entries]
    level1 = []
    for t in range(0, len(entries), TILE_WIDTH):
        chunk = leaves[t : t + TILE_WIDTH]
        files[tile_path(0, t // TILE_WIDTH, len(chunk))] = b"".join(chunk)
        files[entries_path(t // TILE_WIDTH, len(chunk))] = encode_entry_bundle(
            entries[t : t + TILE_WIDTH]
        )
        if len(chunk) == TILE_WIDTH:
            level1.append(root_from_leaf_hashes(chunk))
    if level1:
        files[tile_path(1, 0, len(level1))] = b"".join(level1)
    cr = CompactRange()
    cr.extend(leaves)
    cp = Checkpoint(ORIGIN, len(entries), cr.root())
    files["checkpoint"] = sign_checkpoint(cp, LOG, [WITNESS.cosign(cp.body(), 1)]).encode()
    return files


class _Handler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.files.get(self.path.removeprefix("/log/"))
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: ClassVar[dict[str, bytes]] = {}
    handler = type("H", (_Handler,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()


def test_verify_command(
    served: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, files = served
    monkeypatch.delenv("BASTION_HOME", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./.bastion here: auditors need no home
    files.update(_files([f"e{i}".encode() for i in range(700)]))
    state = tmp_path / "state"
    runner = CliRunner()
    args = ["ledger", "verify", url, "--vkey", LOG.vkey, "--state", str(state), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["ok"] and out["size"] == 700 and out["entries_checked"] == 700

    # witness quorum, with the vkey read from a file
    vkey_file = tmp_path / "log.vkey"
    vkey_file.write_text(LOG.vkey + "\n")
    res = runner.invoke(
        app,
        [
            *["ledger", "verify", url + "/log/", "--vkey", str(vkey_file), "--state", str(state)],
            *["--witness", WITNESS.vkey, "--quorum", "1", "--incremental"],
        ],
    )
    assert res.exit_code == 0, res.output
    assert "700" in res.output

    # a rewritten log: non-zero exit, clear message, JSON error
    files.clear()
    files.update(_files([f"x{i}".encode() for i in range(800)]))
    res = runner.invoke(app, args)
    assert res.exit_code == 6
    err = json.loads(res.output)
    assert err["ok"] is False and err["error"] == "ConsistencyError"
    assert "rewritten" in err["message"]


def test_verify_command_failures(served: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, files = served
    files.update(_files([b"a", b"b", b"c"]))
    runner = CliRunner()
    base = ["ledger", "verify", url, "--state", str(tmp_path)]
    res = runner.invoke(app, [*base, "--vkey", NoteSigner.generate(ORIGIN).vkey])
    assert res.exit_code == 6 and "not signed by any known key" in res.output
    res = runner.invoke(app, [*base, "--vkey", "garbage"])
    assert res.exit_code == 2
    res = runner.invoke(
        app, [*base, "--vkey", LOG.vkey, "--witness", WITNESS.vkey, "--quorum", "2"]
    )
    assert res.exit_code == 6 and "quorum" in res.output
    res = runner.invoke(app, ["ledger", "verify", "http://127.0.0.1:9", "--vkey", LOG.vkey])
    assert res.exit_code == 7


def test_verify_proof_command(tmp_path: Path) -> None:
    entries = [f"entry {i}".encode() for i in range(9)]
    leaves = [leaf_hash(e) for e in entries]
    cp = Checkpoint(ORIGIN, 9, root_from_leaf_hashes(leaves))
    note = sign_checkpoint(cp, LOG, [WITNESS.cosign(cp.body(), 1)])

    def node(level: int, index: int) -> bytes:
        return root_from_leaf_hashes(leaves[index << level : (index + 1) << level])

    bundle = tmp_path / "e4.tlog-proof"
    bundle.write_text(build_proof(entries[4], 4, inclusion_proof(4, 9, node), note))
    entry = tmp_path / "e4.json"
    entry.write_bytes(entries[4])
    runner = CliRunner()
    base = ["ledger", "verify-proof", str(bundle), "--entry", str(entry), "--vkey", LOG.vkey]
    res = runner.invoke(app, [*base, "--witness", WITNESS.vkey, "--quorum", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["ok"] and out["index"] == 4 and out["checkpoint"]["size"] == 9
    res = runner.invoke(app, base)
    assert res.exit_code == 0 and "Proof verified" in res.output

    entry.write_bytes(entries[5])
    res = runner.invoke(app, base)
    assert res.exit_code == 6
    missing = ["ledger", "verify-proof", str(tmp_path / "nope"), "--entry", str(entry)]
    res = runner.invoke(app, [*missing, "--vkey", LOG.vkey, "--json"])
    assert res.exit_code == 2 and "not found" in json.loads(res.output)["message"]
