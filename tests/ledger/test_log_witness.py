"""The tlog-witness add-checkpoint endpoint (status codes per spec) and the log's submissions."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import FixedClock
from bastion.errors import IntegrityError
from bastion.ledger import merkle
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import (
    CosignatureSigner,
    QuorumError,
    open_cosigned_checkpoint,
)
from bastion.ledger.note import NoteSigner
from bastion.ledger.publish import WitnessEndpoint
from bastion.ledger.verifier import LogVerifier
from bastion.ledger.witness import Witness, witness_app
from bastion.store import Database

from .conftest import LogFactory, ServerThread, app_for

LOG = "bastion.test/log"


class Tree:
    """An in-memory log to build checkpoints and proofs for the witness."""

    def __init__(self, signer: NoteSigner, prefix: str = "e") -> None:
        self.signer = signer
        self.prefix = prefix

    def leaves(self, size: int) -> list[bytes]:
        return [merkle.leaf_hash(f"{self.prefix}{i}".encode()) for i in range(size)]

    def root(self, size: int) -> bytes:
        return merkle.root_from_leaf_hashes(self.leaves(size))

    def note(self, size: int, signer: NoteSigner | None = None) -> str:
        cp = Checkpoint(self.signer.name, size, self.root(size))
        return sign_checkpoint(cp, signer or self.signer)

    def proof(self, old: int, new: int) -> list[bytes]:
        leaves = self.leaves(new)

        def node(level: int, index: int) -> bytes:
            return merkle.root_from_leaf_hashes(leaves[index << level : (index + 1) << level])

        return merkle.consistency_proof(old, new, node)


def request(old: int, proof: Sequence[bytes], note: str) -> bytes:
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    return f"old {old}\n{lines}\n{note}".encode()


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner.generate(LOG)


@pytest.fixture
def cosigner() -> CosignatureSigner:
    return CosignatureSigner("witness.test/w1", Ed25519PrivateKey.generate())


@pytest.fixture
def witness(
    db: Database, cosigner: CosignatureSigner, log_signer: NoteSigner, clock: FixedClock
) -> Witness:
    return Witness.for_log_vkeys(db, cosigner, [log_signer.vkey], clock)


def test_cosigns_first_contact_then_consistent_growth(
    witness: Witness, log_signer: NoteSigner, cosigner: CosignatureSigner
) -> None:
    tree = Tree(log_signer)
    first = witness.add_checkpoint(request(0, [], tree.note(10)))
    assert first.status == 200
    cosigned = open_cosigned_checkpoint(
        tree.note(10) + first.body, log_signer.verifier(), [cosigner.verifier()], quorum=1
    )
    assert cosigned.cosigners[0].timestamp == 1767225600  # the injected clock
    second = witness.add_checkpoint(request(10, tree.proof(10, 300), tree.note(300)))
    assert second.status == 200, second.body
    same = witness.add_checkpoint(request(300, [], tree.note(300)))
    assert same.status == 200  # the same checkpoint again is fine
    assert witness.latest(LOG) == (300, tree.root(300))


def test_old_size_mismatch_is_409_with_the_held_size(
    witness: Witness, log_signer: NoteSigner
) -> None:
    tree = Tree(log_signer)
    assert witness.add_checkpoint(request(0, [], tree.note(10))).status == 200
    for old in (0, 5):
        resp = witness.add_checkpoint(request(old, [], tree.note(20)))
        assert (resp.status, resp.body, resp.content_type) == (409, "10\n", "text/x.tlog.size")


def test_checkpoint_older_than_held_is_rejected(witness: Witness, log_signer: NoteSigner) -> None:
    tree = Tree(log_signer)
    assert witness.add_checkpoint(request(0, [], tree.note(20))).status == 200
    assert witness.add_checkpoint(request(20, [], tree.note(10))).status == 400  # old > size
    assert witness.add_checkpoint(request(10, [], tree.note(10))).status == 409
    assert witness.latest(LOG) == (20, tree.root(20))


def test_bad_consistency_proofs_are_422(witness: Witness, log_signer: NoteSigner) -> None:
    tree = Tree(log_signer)
    assert witness.add_checkpoint(request(0, [], tree.note(10))).status == 200
    good = tree.proof(10, 100)
    bad_hash = [bytes(32), *good[1:]]
    for proof in (bad_hash, good[:-1], [*good, bytes(32)], []):
        resp = witness.add_checkpoint(request(10, proof, tree.note(100)))
        assert resp.status == 422, proof
    # A different history of size 100 (same key): no proof from the held size can exist.
    fork = Tree(log_signer, prefix="forked")
    assert witness.add_checkpoint(request(10, good, fork.note(100))).status == 422
    assert witness.latest(LOG) == (10, tree.root(10))
    assert witness.add_checkpoint(request(10, good, tree.note(100))).status == 200


def test_old_zero_with_a_proof_is_422(witness: Witness, log_signer: NoteSigner) -> None:
    tree = Tree(log_signer)
    resp = witness.add_checkpoint(request(0, [bytes(32)], tree.note(10)))
    assert resp.status == 422


def test_same_size_different_root_is_409(witness: Witness, log_signer: NoteSigner) -> None:
    tree = Tree(log_signer)
    assert witness.add_checkpoint(request(0, [], tree.note(10))).status == 200
    fork = Tree(log_signer, prefix="fork")
    assert witness.add_checkpoint(request(10, [], fork.note(10))).status == 409


def test_signature_and_origin_checks(witness: Witness, log_signer: NoteSigner) -> None:
    tree = Tree(log_signer)
    impostor = NoteSigner.generate(LOG)  # right origin, wrong key
    assert witness.add_checkpoint(request(0, [], tree.note(10, impostor))).status == 403
    note = tree.note(10)
    text, sig = note.rsplit(" ", 1)
    flipped = text + " " + ("A" if sig[0] != "A" else "B") + sig[1:]
    assert witness.add_checkpoint(request(0, [], flipped)).status == 403
    other = Tree(NoteSigner.generate("other.example/log"))
    assert witness.add_checkpoint(request(0, [], other.note(10))).status == 404


@pytest.mark.parametrize(
    "body",
    [
        b"old 0\n",  # no blank line, no checkpoint
        b"old 01\n\nx\n",
        b"old -1\n\nx\n",
        b"new 0\n\nx\n",
        b"\xff\xfe\n\n",
        b"old 0\n!!notbase64!!\n\nx\n",
        b"old 0\n" + base64.b64encode(b"short") + b"\n\nx\n",
        b"old 0\n" + (base64.b64encode(bytes(32)) + b"\n") * 64 + b"\nx\n",
        b"old 0\n\nnot a checkpoint\n",
    ],
)
def test_malformed_requests_are_400(witness: Witness, body: bytes) -> None:
    assert witness.add_checkpoint(body).status == 400


def test_state_survives_a_restart(
    db: Database, cosigner: CosignatureSigner, log_signer: NoteSigner, clock: FixedClock
) -> None:
    tree = Tree(log_signer)
    first = Witness.for_log_vkeys(db, cosigner, [log_signer.vkey], clock)
    assert first.add_checkpoint(request(0, [], tree.note(42))).status == 200
    again = Witness.for_log_vkeys(db, cosigner, [log_signer.vkey], clock)
    assert again.add_checkpoint(request(0, [], tree.note(50))).body == "42\n"


def test_http_endpoint_status_codes_and_content_types(
    witness: Witness, log_signer: NoteSigner
) -> None:
    tree = Tree(log_signer)
    with ServerThread(witness_app(witness)) as srv, httpx.Client(base_url=srv.url) as http:
        ok = http.post("/add-checkpoint", content=request(0, [], tree.note(10)))
        assert ok.status_code == 200
        assert ok.text.startswith("— witness.test/w1 ")
        conflict = http.post("/add-checkpoint", content=request(0, [], tree.note(12)))
        assert conflict.status_code == 409
        assert conflict.headers["content-type"] == "text/x.tlog.size"
        assert conflict.text == "10\n"
        assert http.post("/add-checkpoint", content=b"garbage").status_code == 400
        assert http.get("/add-checkpoint").status_code == 405


def test_log_submits_to_witnesses_and_publishes_cosigned_checkpoints(
    make_log: LogFactory,
    witness: Witness,
    cosigner: CosignatureSigner,
    log_signer: NoteSigner,
    tmp_path: Path,
) -> None:
    with ServerThread(witness_app(witness)) as wsrv:
        endpoint = WitnessEndpoint.parse(f"{wsrv.url} {cosigner.vkey}")
        log = make_log(signer=log_signer, witnesses=[endpoint], quorum=1)
        log.append_entries([f"w{i}".encode() for i in range(300)])
        cp = log.publish()
        assert cp.witnesses == 1
        open_cosigned_checkpoint(
            log.checkpoint_note(), log_signer.verifier(), [cosigner.verifier()], quorum=1
        )
        log.append_entries([f"w{i}".encode() for i in range(300, 700)])
        assert log.publish().witnesses == 1  # with a consistency proof from 300
        assert witness.latest(LOG) == (700, log.checkpoint().root_hash)  # type: ignore[union-attr]

        # A new process knows nothing of the witness's size: it learns it from the 409.
        other = make_log(signer=log_signer, witnesses=[endpoint], quorum=1)
        other.append_entries([b"late"])
        assert other.publish().witnesses == 1

        with (
            ServerThread(app_for(log)) as lsrv,
            LogVerifier(
                lsrv.url, log_signer.vkey, tmp_path / "s", [cosigner.vkey], quorum=1
            ) as verifier,
        ):
            assert verifier.verify().size == 701


def test_without_quorum_the_newer_uncosigned_checkpoint_is_not_published(
    make_log: LogFactory, log_signer: NoteSigner, cosigner: CosignatureSigner
) -> None:
    # The witness is unreachable: nothing gets cosigned, so nothing meets the quorum.
    endpoint = WitnessEndpoint.parse(f"http://127.0.0.1:9 {cosigner.vkey}")
    log = make_log(signer=log_signer, witnesses=[endpoint], quorum=1)
    log.append_entries([b"a"])
    cp = log.publish()
    assert cp.witnesses == 0
    assert log.checkpoint() is None
    assert log.publisher.last_error is not None and "unreachable" in log.publisher.last_error
    with pytest.raises(QuorumError):
        open_cosigned_checkpoint(cp.text, log_signer.verifier(), [cosigner.verifier()], quorum=1)


def test_witness_config_needs_url_and_key(cosigner: CosignatureSigner) -> None:
    from bastion.errors import ConfigError

    assert WitnessEndpoint.parse(f"{cosigner.vkey} https://w.example/").url == "https://w.example"
    for bad in ("https://w.example", cosigner.vkey, "https://w.example not-a-key"):
        with pytest.raises(ConfigError):
            WitnessEndpoint.parse(bad)


def test_cosignature_from_an_unknown_key_is_not_kept(
    make_log: LogFactory, db: Database, log_signer: NoteSigner, clock: FixedClock
) -> None:
    real = CosignatureSigner("witness.test/w1", Ed25519PrivateKey.generate())
    claimed = CosignatureSigner("witness.test/w1", Ed25519PrivateKey.generate())
    witness = Witness.for_log_vkeys(db, real, [log_signer.vkey], clock)
    with ServerThread(witness_app(witness)) as wsrv:
        endpoint = WitnessEndpoint.parse(f"{wsrv.url} {claimed.vkey}")
        log = make_log(signer=log_signer, witnesses=[endpoint])
        log.append_entries([b"x"])
        assert log.publish().witnesses == 0
        assert "witness.test/w1" not in log.checkpoint_note().split("\n\n", 1)[1].replace(
            f"— {LOG} ", ""
        )
    with pytest.raises(IntegrityError):
        open_cosigned_checkpoint(
            log.checkpoint_note(), log_signer.verifier(), [claimed.verifier()], quorum=1
        )
