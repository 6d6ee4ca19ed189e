"""The static-files log storage: the tlog-tiles layout on disk, crash safety, no forks, and a
plain static file server (``python -m http.server``) serving it to the verifier exactly as
``bastion serve`` does."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bastion.cli.home_cmd import init_home
from bastion.cli.main import app
from bastion.clock import FixedClock, SystemClock
from bastion.errors import IntegrityError
from bastion.home import Home
from bastion.ledger import merkle
from bastion.ledger.file_storage import FileLogStorage
from bastion.ledger.log import Log, open_log
from bastion.ledger.note import NoteSigner
from bastion.ledger.tiles import TILE_WIDTH, encode_entry_bundle, entries_path, tile_path
from bastion.ledger.verifier import LogVerifier
from bastion.store import open_database
from bastion.wiring import initialize

from .test_log_processes import kill_once, run_to_the_end, spawn


def file_log(root: Path, signer: NoteSigner) -> Log:
    storage = FileLogStorage(root)
    storage.create()
    return Log(None, signer, FixedClock(), storage=storage, background=False)


def test_commits_write_the_tlog_tiles_layout(tmp_path: Path, signer: NoteSigner) -> None:
    root = tmp_path / "log"
    log = file_log(root, signer)
    entries = [f"entry {i}".encode() for i in range(600)]
    for first in range(0, 600, 100):  # six commits: partial tiles and bundles grow
        log.append_entries(entries[first : first + 100])
    cp = log.publish()
    log.close()

    leaves = [merkle.leaf_hash(e) for e in entries]
    assert (root / "checkpoint").read_text() == cp.text
    assert (root / tile_path(0, 0)).read_bytes() == b"".join(leaves[:256])
    assert (root / tile_path(0, 1)).read_bytes() == b"".join(leaves[256:512])
    assert (root / tile_path(0, 2, 88)).read_bytes() == b"".join(leaves[512:])
    assert (root / tile_path(1, 0, 2)).read_bytes() == b"".join(
        merkle.root_from_leaf_hashes(leaves[i : i + 256]) for i in (0, 256)
    )
    for index, width in ((0, 256), (1, 256), (2, 88)):
        first = index * TILE_WIDTH
        assert (root / entries_path(index, width)).read_bytes() == encode_entry_bundle(
            entries[first : first + width]
        )
    # Partial tiles of the earlier sizes are still there, for clients of older checkpoints.
    assert (root / tile_path(0, 0, 100)).read_bytes() == b"".join(leaves[:100])
    assert (root / entries_path(1, 44)).read_bytes() == encode_entry_bundle(entries[256:300])
    assert cp.root_hash == merkle.root_from_leaf_hashes(leaves)
    assert (root / "tile/0/000").is_file() and (root / "tile/entries/002.p/88").is_file()
    # Nothing half-written is left where a web server would serve it.
    assert not list((root / ".state" / "tmp").iterdir())


def test_a_reopened_log_continues_from_its_files(tmp_path: Path, signer: NoteSigner) -> None:
    root = tmp_path / "log"
    log = file_log(root, signer)
    log.append_entries([f"a{i}".encode() for i in range(300)])
    log.publish()
    log.close()
    again = file_log(root, signer)
    assert again.check_head() is not None
    assert again.append_entry(b"more").index == 300
    again.publish()
    report = again.verify_storage()
    assert report.tree_size == 301 and report.entries_checked == 301
    assert again.entry(299) == b"a299" and again.entry(300) == b"more"
    again.close()


def test_two_writers_on_one_directory_cannot_fork_it(tmp_path: Path, signer: NoteSigner) -> None:
    root = tmp_path / "log"
    first, second = file_log(root, signer), file_log(root, signer)
    first.append_entries([b"a0", b"a1"])
    second.append_entries([b"b0"])  # nothing cached yet: loads size 2 under the lock
    first.append_entries([b"a2"])  # its cached edge is stale: the compare-and-swap refuses it
    second.append_entries([b"b1", b"b2"])
    assert first.sequencer.reloads == 1 and second.sequencer.reloads == 1
    assert [e for _, e in first.entries(0, 6)] == [b"a0", b"a1", b"b0", b"a2", b"b1", b"b2"]
    assert first.verify_storage().entries_checked == 6
    first.close()
    second.close()


def test_the_public_checkpoint_waits_for_the_witness_quorum(
    tmp_path: Path, signer: NoteSigner
) -> None:
    root = tmp_path / "log"
    storage = FileLogStorage(root, quorum=1)
    storage.create()
    log = Log(None, signer, FixedClock(), storage=storage, quorum=1, background=False)
    log.append_entry(b"x")
    cp = log.publish()  # no witness answered: stored, but not published
    assert not (root / "checkpoint").exists()
    assert storage.latest_checkpoint() == cp and storage.latest_checkpoint(min_witnesses=1) is None
    storage.record_cosignatures(cp.tree_size, "— w.example AAAA\n", 1)
    assert (root / "checkpoint").read_text() == cp.note + "— w.example AAAA\n"
    log.close()


def test_kill_9_at_random_moments_loses_no_acknowledged_entry(
    tmp_path: Path, signer: NoteSigner
) -> None:
    root = tmp_path / "log"
    FileLogStorage(root).create()
    url = f"sqlite:///{tmp_path / 'unused.db'}"  # the children's side-write database
    acked: dict[int, bytes] = {}
    guard = threading.Lock()
    rng = random.Random(4321)
    for run in range(4):
        proc = spawn(url, None, f"run{run}", 4, 0, signer.skey, str(root))
        kill_once(proc, acked, guard, rng, 0.5)
        log = file_log(root, signer)
        log.check_head()
        assert log.verify_storage().tree_size >= len(acked)
        for index, entry in acked.items():
            assert log.entry(index) == entry, f"acknowledged entry {index} lost or changed"
        log.close()
    log = file_log(root, signer)
    assert log.append_entry(b"after the crashes").index == log.size() - 1
    log.close()


def test_several_processes_append_to_one_directory_without_forking(
    tmp_path: Path, signer: NoteSigner
) -> None:
    root = tmp_path / "log"
    FileLogStorage(root).create()
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    acked: dict[int, bytes] = {}
    guard = threading.Lock()
    procs = [spawn(url, None, f"p{k}", 2, 40, signer.skey, str(root)) for k in range(3)]
    run_to_the_end(procs, acked, guard)
    total = 3 * 2 * 40
    assert sorted(acked) == list(range(total))  # contiguous, no index twice
    log = file_log(root, signer)
    leaves = [merkle.leaf_hash(acked[i]) for i in range(total)]
    cp = log.checkpoint()
    assert cp is not None and cp.root_hash == merkle.root_from_leaf_hashes(leaves[: cp.tree_size])
    assert log.verify_storage().entries_checked == total
    log.close()


# --- served by a plain static file server, and by `bastion serve` -------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def static_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Home, Path]]:
    """A home whose log is static files in <www>/log (a web root), with 700 entries."""
    monkeypatch.delenv("BASTION_DATABASE_URL", raising=False)
    www = tmp_path / "www"
    home = init_home(tmp_path / "home", origin="files.test/log")
    config = home.config_file.read_text()
    home.config_file.write_text(
        config.replace("[ledger]\n", f'[ledger]\nstorage = "files"\ndirectory = "{www}/log"\n', 1)
    )
    home = Home.load(home.path)
    initialize(home, policy_pack=False)
    db = open_database(home.database_url)
    log = open_log(home, db, SystemClock(), background=False)
    log.append_entries([f"static entry {i}".encode() for i in range(700)])
    log.publish()
    log.close()
    db.close()
    yield home, www


@pytest.fixture
def servers(static_home: tuple[Home, Path], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL of `python -m http.server` on the web root, URL of `bastion serve` on the home)."""
    home, www = static_home
    static_port, serve_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DATABASE_URL"}
    # The served log must stay the 700 entries the static server has: no clean-room
    # snapshot refresh (it records an entry) while the two are compared.
    env["BASTION_CLEANROOM_SNAPSHOT_REFRESH_SECONDS"] = "0"
    static = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
        cwd=www,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with (tmp_path / "serve.log").open("wb") as out:
        served = subprocess.Popen(
            [
                *[sys.executable, "-m", "bastion.cli.main", "serve", "--home", str(home.path)],
                *["--port", str(serve_port), "--sweep-seconds", "0"],
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        static_url, serve_url = f"http://127.0.0.1:{static_port}", f"http://127.0.0.1:{serve_port}"
        wait_for(static_url + "/log/checkpoint", static)
        wait_for(serve_url + "/log/checkpoint", served)
        yield static_url, serve_url
    finally:
        for proc in (static, served):
            proc.terminate()
            proc.wait(timeout=10)


def vkey_of(home: Home) -> str:
    db = open_database(home.database_url)
    log = open_log(home, db, SystemClock(), background=False)
    try:
        return log.vkey
    finally:
        log.close()
        db.close()


def test_the_verifier_reads_a_static_server_exactly_as_bastion_serve(
    static_home: tuple[Home, Path], servers: tuple[str, str], tmp_path: Path
) -> None:
    home, www = static_home
    static_url, serve_url = servers
    vkey = vkey_of(home)
    assert (
        httpx.get(static_url + "/log/checkpoint").text
        == httpx.get(serve_url + "/log/checkpoint").text
    )
    with LogVerifier(static_url, vkey, tmp_path / "a") as verifier:
        from_static = verifier.verify()
    with LogVerifier(serve_url, vkey, tmp_path / "b") as verifier:
        from_serve = verifier.verify()
    assert from_static.size == from_serve.size == 700
    assert from_static.root_hash == from_serve.root_hash
    assert from_static.entries_checked == from_serve.entries_checked == 700
    assert from_static.tiles_fetched == from_serve.tiles_fetched
    # Each auditor's state from one server is consistent with the other's log: the same log.
    with LogVerifier(serve_url, vkey, tmp_path / "a") as verifier:
        assert verifier.verify(incremental=True).root_hash == from_static.root_hash

    runner = CliRunner()
    # ...and from a copy of the files, read straight from disk.
    for k, url in enumerate((static_url, serve_url, f"file://{www}/log")):
        state = tmp_path / f"cli-{k}"
        res = runner.invoke(
            app, ["ledger", "verify", url, "--vkey", vkey, "--state", str(state), "--json"]
        )
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["ok"] and out["size"] == 700 and out["root_hash"] == from_static.root_hash.hex()


@pytest.mark.parametrize("what", ["tile", "level1", "entry", "checkpoint"])
def test_a_file_tampered_on_disk_is_detected(
    static_home: tuple[Home, Path], servers: tuple[str, str], tmp_path: Path, what: str
) -> None:
    home, www = static_home
    static_url, _ = servers
    vkey = vkey_of(home)
    root = www / "log"
    if what == "tile":
        path = root / tile_path(0, 1)
        data = path.read_bytes()
        path.write_bytes(data[:64] + bytes(32) + data[96:])
    elif what == "level1":
        path = root / tile_path(1, 0, 2)
        path.write_bytes(bytes(32) + path.read_bytes()[32:])
    elif what == "entry":
        path = root / entries_path(0)
        path.write_bytes(path.read_bytes().replace(b"static entry 17", b"static entry 71"))
    else:
        path = root / "checkpoint"
        lines = path.read_text().split("\n")
        lines[1] = "699"  # claim a smaller tree under the original signature
        path.write_text("\n".join(lines))
    with (
        LogVerifier(static_url, vkey, tmp_path / "state") as verifier,
        pytest.raises(IntegrityError),
    ):
        verifier.verify()
    res = CliRunner().invoke(
        app, ["ledger", "verify", static_url, "--vkey", vkey, "--state", str(tmp_path / "cli")]
    )
    assert res.exit_code == 6, res.output


@pytest.mark.parametrize("processes", [1, 2])
def test_worker_processes_check_what_the_verifier_checks(
    tmp_path: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    """A large log's bundles are hashed in worker processes: same result as in-process, and a
    tampered bundle is reported from there just the same (over file:// and over HTTP)."""
    from bastion.ledger import verifier as verifier_module

    monkeypatch.setattr(verifier_module, "_PROCESS_CHUNK", 1)  # 6 bundles are "large" now
    www = tmp_path / "www"
    log = file_log(www / "log", signer)
    log.append_entries([f"p{i}".encode() for i in range(1400)])
    log.publish()
    log.close()
    port = free_port()
    static = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=www,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/log/checkpoint", static)
        for url in (f"file://{www}/log", f"http://127.0.0.1:{port}"):
            state = tmp_path / f"state-{processes}-{url[:4]}"
            with LogVerifier(url, signer.vkey, state, processes=processes) as verifier:
                result = verifier.verify()
            assert result.size == result.entries_checked == 1400
            assert result.root_hash == merkle.root_from_leaf_hashes(
                [merkle.leaf_hash(f"p{i}".encode()) for i in range(1400)]
            )
        bundle = www / "log" / entries_path(4)
        bundle.write_bytes(bundle.read_bytes().replace(b"p1100", b"p1101"))
        for url in (f"file://{www}/log", f"http://127.0.0.1:{port}"):
            with (
                LogVerifier(url, signer.vkey, tmp_path / "fresh", processes=processes) as verifier,
                pytest.raises(IntegrityError, match=r"entry 1100 .* does not hash"),
            ):
                verifier.verify()
    finally:
        static.terminate()
        static.wait(timeout=10)
