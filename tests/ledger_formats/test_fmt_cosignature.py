"""C2SP tlog-cosignature v1 quorums and C2SP tlog-proof bundles."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import IntegrityError
from bastion.ledger.checkpoint import Checkpoint, CheckpointError, sign_checkpoint
from bastion.ledger.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    QuorumError,
    open_cosigned_checkpoint,
    verify_cosignatures,
)
from bastion.ledger.merkle import ProofError, inclusion_proof, leaf_hash, root_from_leaf_hashes
from bastion.ledger.note import (
    KeyFormatError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    format_vkey,
    parse_note,
)
from bastion.ledger.tlogproof import TlogProofError, build_proof, parse_proof, verify_proof

LOG = NoteSigner.generate("log.example/bastion")
W1_KEY = Ed25519PrivateKey.generate()
W1 = CosignatureSigner("w1.example", W1_KEY)
W2 = CosignatureSigner("w2.example", Ed25519PrivateKey.generate())
W3 = CosignatureSigner("w3.example", Ed25519PrivateKey.generate())
T = 1_700_000_000

ENTRIES = [f"entry {i}".encode() for i in range(11)]
LEAVES = [leaf_hash(e) for e in ENTRIES]
CP = Checkpoint(LOG.name, len(ENTRIES), root_from_leaf_hashes(LEAVES))


def _cosigned(*witnesses: CosignatureSigner) -> str:
    return sign_checkpoint(CP, LOG, [w.cosign(CP.body(), T + i) for i, w in enumerate(witnesses)])


def test_cosignature_format() -> None:
    line = W1.cosign(CP.body(), T)
    name, b64 = line.rstrip("\n").removeprefix("— ").split(" ")
    assert name == "w1.example"
    blob = base64.b64decode(b64)
    pub = W1.verifier().public_key_bytes
    assert blob[:4] == hashlib.sha256(b"w1.example\n\x04" + pub).digest()[:4]
    assert int.from_bytes(blob[4:12], "big") == T
    msg = f"cosignature/v1\ntime {T}\n".encode() + CP.body().encode()
    Ed25519PublicKey.from_public_bytes(pub).verify(blob[12:], msg)  # raises if wrong
    assert W1.vkey.split("+")[0] == "w1.example"
    assert base64.b64decode(W1.vkey.split("+", 2)[2])[0] == 0x04
    assert CosignatureVerifier.from_vkey(W1.vkey) == W1.verifier()


def test_cosignature_vkey_is_not_a_note_vkey() -> None:
    with pytest.raises(KeyFormatError):
        NoteVerifier.from_vkey(W1.vkey)
    with pytest.raises(KeyFormatError):
        CosignatureVerifier.from_vkey(LOG.vkey)


def test_quorum_met() -> None:
    note = _cosigned(W1, W2)
    ws = [W1.verifier(), W2.verifier(), W3.verifier()]
    assert verify_cosignatures(note, LOG.verifier(), ws, 2) == CP
    result = open_cosigned_checkpoint(note, LOG.verifier(), ws, 2)
    assert [(c.name, c.timestamp) for c in result.cosigners] == [
        ("w1.example", T),
        ("w2.example", T + 1),
    ]
    assert verify_cosignatures(note, LOG.verifier(), ws, 0) == CP


def test_quorum_not_met() -> None:
    note = _cosigned(W1)
    ws = [W1.verifier(), W2.verifier(), W3.verifier()]
    with pytest.raises(QuorumError, match="1 valid witness"):
        verify_cosignatures(note, LOG.verifier(), ws, 2)


def test_duplicated_witness_counts_once() -> None:
    line = W1.cosign(CP.body(), T)
    note = sign_checkpoint(CP, LOG, [line, W1.cosign(CP.body(), T + 5)])
    ws = [W1.verifier(), W2.verifier()]
    with pytest.raises(QuorumError):
        verify_cosignatures(note, LOG.verifier(), ws, 2)
    # the same key configured twice does not make a quorum of two either
    with pytest.raises(QuorumError):
        verify_cosignatures(note, LOG.verifier(), [W1.verifier(), W1.verifier()], 2)
    # nor the same key under two names (the v1 message does not commit to the name)
    alias = CosignatureVerifier.from_vkey(
        format_vkey("alias.example", 0x04, W1.verifier().public_key_bytes)
    )
    alias_note = sign_checkpoint(
        CP, LOG, [line, CosignatureSigner("alias.example", W1_KEY).cosign(CP.body(), T)]
    )
    assert (
        len(
            open_cosigned_checkpoint(
                alias_note, LOG.verifier(), [W1.verifier(), alias], 1
            ).cosigners
        )
        == 2
    )
    with pytest.raises(QuorumError):
        verify_cosignatures(alias_note, LOG.verifier(), [W1.verifier(), alias], 2)


def test_bad_cosignature_rejected() -> None:
    line = W1.cosign(CP.body(), T)
    blob = bytearray(base64.b64decode(line.rstrip("\n").split(" ")[2]))
    blob[5] ^= 1  # change the timestamp: the signature no longer matches
    bad = f"— w1.example {base64.b64encode(bytes(blob)).decode()}\n"
    note = sign_checkpoint(CP, LOG, [bad])
    with pytest.raises(NoteError, match="invalid signature"):
        verify_cosignatures(note, LOG.verifier(), [W1.verifier()], 1)
    # a cosignature over another checkpoint
    other = Checkpoint(LOG.name, 10, root_from_leaf_hashes(LEAVES[:10]))
    note = sign_checkpoint(CP, LOG, [W1.cosign(other.body(), T)])
    with pytest.raises(NoteError):
        verify_cosignatures(note, LOG.verifier(), [W1.verifier()], 1)


def test_witnesses_without_log_signature_rejected() -> None:
    body = CP.body()
    note = body + "\n" + W1.cosign(body, T) + W2.cosign(body, T)
    with pytest.raises(CheckpointError, match="not signed by the log"):
        verify_cosignatures(note, LOG.verifier(), [W1.verifier(), W2.verifier()], 2)


def test_impossible_quorum() -> None:
    with pytest.raises(QuorumError, match="impossible"):
        verify_cosignatures(_cosigned(W1), LOG.verifier(), [W1.verifier()], 2)


# --- tlog-proof --------------------------------------------------------------------------


def _node(level: int, index: int) -> bytes:
    return root_from_leaf_hashes(LEAVES[index << level : (index + 1) << level])


def _bundle(index: int, extra: bytes | None = None, note: str | None = None) -> str:
    proof = inclusion_proof(index, len(ENTRIES), _node)
    return build_proof(ENTRIES[index], index, proof, note or _cosigned(W1, W2), extra)


def test_tlog_proof_round_trip() -> None:
    for i in range(len(ENTRIES)):
        bundle = _bundle(i, extra=b"ctx" if i % 2 else None)
        assert bundle.startswith("c2sp.org/tlog-proof@v1\n")
        vp = verify_proof(bundle, ENTRIES[i], LOG.verifier(), [W1.verifier(), W2.verifier()], 2)
        assert vp.index == i and vp.checkpoint == CP
        assert vp.extra == (b"ctx" if i % 2 else None)
        assert len(vp.cosigners) == 2


def test_tlog_proof_layout() -> None:
    bundle = _bundle(3, extra=b"hi")
    lines = bundle.split("\n")
    assert lines[1] == "extra aGk="
    assert lines[2] == "index 3"
    parsed = parse_proof(bundle)
    assert len(parsed.proof) == 4
    text, _ = parse_note(parsed.checkpoint_note)
    assert text == CP.body()


def test_tlog_proof_tampering_detected() -> None:
    bundle = _bundle(5)
    v = LOG.verifier()
    with pytest.raises(ProofError):
        verify_proof(bundle, b"another entry", v)
    with pytest.raises(ProofError):
        verify_proof(bundle.replace("index 5", "index 4"), ENTRIES[5], v)
    lines = bundle.split("\n")
    # truncated and extended proofs
    truncated = "\n".join(lines[:3] + lines[4:])
    with pytest.raises(ProofError):
        verify_proof(truncated, ENTRIES[5], v)
    extended = "\n".join([*lines[:3], lines[2 + 1], *lines[3:]])
    with pytest.raises(ProofError):
        verify_proof(extended, ENTRIES[5], v)
    # a flipped hash
    h = bytearray(base64.b64decode(lines[2 + 1]))
    h[0] ^= 1
    flipped = "\n".join([*lines[:3], base64.b64encode(bytes(h)).decode(), *lines[4:]])
    with pytest.raises(ProofError):
        verify_proof(flipped, ENTRIES[5], v)
    # wrong log key, and missing quorum
    with pytest.raises(IntegrityError):
        verify_proof(bundle, ENTRIES[5], NoteSigner.generate(LOG.name).verifier())
    with pytest.raises(QuorumError):
        verify_proof(bundle, ENTRIES[5], v, [W1.verifier(), W2.verifier(), W3.verifier()], 3)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
        lambda b: b.replace("index 5", "index 05"),
        lambda b: b.replace("index 5", "index -5"),
        lambda b: b.replace("index 5", "idx 5"),
        lambda b: b.replace("index 5\n", "index 5\nnot-base64!\n"),
        lambda b: b.replace("index 5\n", "index 5\nAAAA\n"),  # hash of the wrong size
        lambda b: b.replace("\n\n", "\n", 1),  # no separator before the checkpoint
        lambda b: b.replace("index 5\n", "extra !!\nindex 5\n"),
        lambda b: b.split("\n\n")[0],
    ],
)
def test_malformed_bundles_rejected(mutate: object) -> None:
    bundle = _bundle(5)
    assert callable(mutate)
    with pytest.raises(IntegrityError):
        verify_proof(mutate(bundle), ENTRIES[5], LOG.verifier())
    assert issubclass(TlogProofError, IntegrityError)


def test_build_refuses_a_proof_that_does_not_verify() -> None:
    proof = inclusion_proof(2, len(ENTRIES), _node)
    with pytest.raises(ProofError):
        build_proof(ENTRIES[3], 2, proof, _cosigned())
