"""The tlog-tiles API over a real uvicorn server, checked by the independent verifier."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from bastion.errors import IntegrityError
from bastion.ledger import merkle, storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.ledger.tiles import decode_entry_bundle
from bastion.ledger.tlogproof import verify_proof
from bastion.ledger.verifier import ConsistencyError, LogVerifier
from bastion.store import Database

from .conftest import LogFactory, ServerThread, app_for


def fill(log: Log, start: int, stop: int, prefix: str = "entry") -> None:
    log.append_entries([f"{prefix} {i}".encode() for i in range(start, stop)])


def test_tiles_api_paths_types_and_cache_headers(log: Log) -> None:
    fill(log, 0, 280)
    log.publish()
    fill(log, 280, 300)
    log.publish()
    fill(log, 300, 310)  # committed, not yet published: must not be served
    with ServerThread(app_for(log)) as srv, httpx.Client(base_url=srv.url) as http:
        r = http.get("/log/checkpoint")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert "no-cache" in r.headers["cache-control"]
        assert r.text.split("\n")[1] == "300"

        r = http.get("/log/tile/0/000")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.content == b"".join(merkle.leaf_hash(f"entry {i}".encode()) for i in range(256))
        assert len(http.get("/log/tile/0/001.p/44").content) == 44 * 32
        # An older checkpoint's width (280) is still served, as a prefix.
        older = http.get("/log/tile/0/001.p/24")
        assert older.status_code == 200
        assert older.content == http.get("/log/tile/0/001.p/44").content[: 24 * 32]
        tile1 = http.get("/log/tile/1/000.p/1")
        assert tile1.content == merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(f"entry {i}".encode()) for i in range(256)]
        )

        bundle = http.get("/log/tile/entries/000", headers={"Accept-Encoding": "gzip"})
        assert bundle.status_code == 200
        assert bundle.headers["content-encoding"] == "gzip"
        entries = decode_entry_bundle(bundle.content, 256)
        assert entries[5] == b"entry 5"
        partial = http.get("/log/tile/entries/001.p/44")
        assert decode_entry_bundle(partial.content, 44)[-1] == b"entry 299"

        for beyond in (
            "/log/tile/0/001.p/45",  # committed but not in a published checkpoint
            "/log/tile/0/001",  # not full yet
            "/log/tile/0/002.p/1",
            "/log/tile/2/000.p/1",
            "/log/tile/entries/001.p/45",
            "/log/tile/entries/005",
        ):
            resp = http.get(beyond)
            assert resp.status_code == 404, beyond
            assert "immutable" not in resp.headers.get("cache-control", "")
        for malformed in ("/log/tile/0/x000/001", "/log/tile/0/1", "/log/tile/0/001.p/256"):
            assert http.get(malformed).status_code in (400, 404), malformed


def test_proof_endpoint_json_and_tlog_proof(log: Log, signer: NoteSigner) -> None:
    fill(log, 0, 600)
    cp = log.publish()
    with ServerThread(app_for(log)) as srv, httpx.Client(base_url=srv.url) as http:
        body = http.get("/log/proof/300").json()
        assert body["tree_size"] == 600
        entry = base64.b64decode(body["entry"])
        assert entry == b"entry 300"
        proof = [base64.b64decode(h) for h in body["inclusion_proof"]]
        merkle.verify_inclusion(merkle.leaf_hash(entry), 300, 600, proof, cp.root_hash)

        bundle = http.get("/log/proof/599", params={"format": "tlog-proof"})
        assert bundle.status_code == 200
        verified = verify_proof(bundle.text, b"entry 599", signer.verifier())
        assert (verified.index, verified.checkpoint.size) == (599, 600)
        with pytest.raises(IntegrityError):  # the bundle proves only its own entry
            verify_proof(bundle.text, b"entry 598", signer.verifier())

        fill(log, 600, 601)  # committed, not yet published
        assert http.get("/log/proof/600").status_code == 404
        assert http.get("/log/proof/-1").status_code in (400, 404, 422)


def test_verifier_checks_the_whole_log_over_http(
    log: Log, signer: NoteSigner, tmp_path: Path
) -> None:
    fill(log, 0, 700)
    log.publish()
    with ServerThread(app_for(log)) as srv:
        with LogVerifier(srv.url, signer.vkey, tmp_path / "state") as verifier:
            result = verifier.verify()
            assert (result.size, result.entries_checked) == (700, 700)
        fill(log, 700, 1000)
        log.publish()
        with LogVerifier(srv.url, signer.vkey, tmp_path / "state") as verifier:
            again = verifier.verify(incremental=True)
            assert (again.size, again.previous_size) == (1000, 700)
        with (
            LogVerifier(srv.url, NoteSigner.generate(signer.name).vkey, tmp_path / "w") as wrong,
            pytest.raises(IntegrityError),
        ):
            wrong.verify()


def _tamper_then_verify(
    make_log: LogFactory, db: Database, signer: NoteSigner, tmp_path: Path, sql: str
) -> None:
    first = make_log()
    fill(first, 0, 600)
    first.publish()
    with db.transaction() as cur:
        _apply(cur, sql)
    served = make_log()  # a fresh reader: nothing cached from before the tampering
    with (
        ServerThread(app_for(served)) as srv,
        LogVerifier(srv.url, signer.vkey, tmp_path / "state") as verifier,
        pytest.raises(IntegrityError),
    ):
        verifier.verify()


def _apply(cur: storage.Cursor, what: str) -> None:
    if what == "tile":
        data = storage.read_tile(cur, 0, 1)
        assert data is not None
        storage.write_tiles(cur, [(0, 1, data[:64] + bytes(32) + data[96:])])
    elif what == "level1":
        data = storage.read_tile(cur, 1, 0)
        assert data is not None
        storage.write_tiles(cur, [(1, 0, bytes(32) + data[32:])])
    elif what == "entry":
        row = storage.read_bundle(cur, 0)
        assert row is not None
        storage.write_bundles(cur, [(0, row[0], row[1].replace(b"entry 17", b"entry 71"))])
    elif what == "checkpoint":
        cp = storage.latest_checkpoint(cur)
        assert cp is not None
        lines = cp.note.split("\n")
        lines[1] = "599"  # claim a smaller tree under the original signature
        cur.execute(
            "UPDATE ledger_checkpoints SET note = ? WHERE tree_size = ?",
            ("\n".join(lines), cp.tree_size),
        )


@pytest.mark.parametrize("what", ["tile", "level1", "entry", "checkpoint"])
def test_verifier_detects_tampering(
    make_log: LogFactory, db: Database, signer: NoteSigner, tmp_path: Path, what: str
) -> None:
    _tamper_then_verify(make_log, db, signer, tmp_path, what)


def test_verifier_detects_a_log_that_forked_or_shrank(
    make_log: LogFactory, db: Database, db_url_factory: object, signer: NoteSigner, tmp_path: Path
) -> None:
    from bastion.store import open_database

    honest = make_log()
    fill(honest, 0, 300)
    honest.publish()
    state = tmp_path / "state"
    with (
        ServerThread(app_for(honest)) as srv,
        LogVerifier(srv.url, signer.vkey, state) as verifier,
    ):
        assert verifier.verify().size == 300

    opened: list[Database] = []

    def other_log(n: int, prefix: str) -> Log:
        url, schema = db_url_factory()  # type: ignore[operator]
        other_db = open_database(url, schema=schema)
        opened.append(other_db)
        storage.create_tables(other_db)
        log = make_log(database=other_db)
        fill(log, 0, n, prefix)
        log.publish()
        return log

    try:
        _fork_shrink_rewrite(other_log, signer, state)
    finally:
        for log_db in opened:
            log_db.close()


def _fork_shrink_rewrite(other_log: object, signer: NoteSigner, state: Path) -> None:
    make = other_log  # (n, prefix) -> Log on a fresh database with the same key
    assert callable(make)
    # Same key, same origin, same size, different history: a split view.
    forked = make(300, "rewritten")
    with (
        ServerThread(app_for(forked)) as srv,
        LogVerifier(srv.url, signer.vkey, state) as verifier,
        pytest.raises(ConsistencyError, match="forked"),
    ):
        verifier.verify()
    # A log that shows fewer entries than the auditor already saw.
    shrunk = make(200, "entry")
    with (
        ServerThread(app_for(shrunk)) as srv,
        LogVerifier(srv.url, signer.vkey, state) as verifier,
        pytest.raises(ConsistencyError, match="shrank"),
    ):
        verifier.verify()
    # A longer log whose first 300 entries differ: rewritten history.
    rewritten = make(400, "rewritten")
    with (
        ServerThread(app_for(rewritten)) as srv,
        LogVerifier(srv.url, signer.vkey, state) as verifier,
        pytest.raises(ConsistencyError),
    ):
        verifier.verify()
