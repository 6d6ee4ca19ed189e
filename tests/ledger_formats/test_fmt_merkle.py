"""RFC 6962/9162 Merkle tree: shared vectors, brute force, and proofs that must be rejected."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import IntegrityError
from bastion.ledger import merkle
from bastion.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# Vendored from transparency-dev/merkle (see vectors/README.md): the suite reads nothing
# outside the repository.
VECTORS = Path(__file__).parent / "vectors" / "merkle"


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _load(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")


def test_vector_sets_are_present() -> None:
    # Guard against silently testing nothing if the directory moves.
    assert len(INCLUSION) >= 60
    assert len(CONSISTENCY) >= 90
    assert any(v["wantErr"] for _, v in INCLUSION)
    assert any(not v["wantErr"] for _, v in CONSISTENCY)


@pytest.mark.parametrize(("name", "vec"), INCLUSION, ids=[n for n, _ in INCLUSION])
def test_inclusion_vector(name: str, vec: dict[str, Any]) -> None:
    proof = [_b64(p) for p in vec["proof"] or []]
    args = (_b64(vec["leafHash"]), vec["leafIdx"], vec["treeSize"], proof, _b64(vec["root"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(("name", "vec"), CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_consistency_vector(name: str, vec: dict[str, Any]) -> None:
    proof = [_b64(p) for p in vec["proof"] or []]
    args = (vec["size1"], vec["size2"], proof, _b64(vec["root1"]), _b64(vec["root2"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- brute force reference (RFC 9162 §2.1 recursive definitions) ---------------------------


def _mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], b), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _reader(leaves: list[bytes]) -> merkle.NodeReader:
    def read(level: int, index: int) -> bytes:
        begin, end = index << level, (index + 1) << level
        assert end <= len(leaves), "reader asked for a subtree outside the tree"
        return _mth(leaves[begin:end])

    return read


MAX_N = 70
ALL_LEAVES = _leaves(MAX_N)


def test_known_hashes() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


def test_roots_match_brute_force_for_all_small_sizes() -> None:
    for n in range(MAX_N + 1):
        leaves = ALL_LEAVES[:n]
        want = _mth(leaves)
        assert root_from_leaf_hashes(leaves) == want
        assert merkle.root(n, _reader(leaves)) == want
        cr = CompactRange()
        cr.extend(leaves)
        assert cr.root() == want
        assert CompactRange.from_tree(n, _reader(leaves)).root() == want


def test_all_inclusion_proofs_up_to_70() -> None:
    for n in range(1, MAX_N + 1):
        leaves = ALL_LEAVES[:n]
        root = _mth(leaves)
        read = _reader(leaves)
        for m in range(n):
            proof = inclusion_proof(m, n, read)
            assert proof == _path(m, leaves)
            verify_inclusion(leaves[m], m, n, proof, root)


def test_all_consistency_proofs_up_to_70() -> None:
    roots = [_mth(ALL_LEAVES[:n]) for n in range(MAX_N + 1)]
    for n in range(1, MAX_N + 1):
        leaves = ALL_LEAVES[:n]
        read = _reader(leaves)
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, read)
            assert proof == _subproof(m, leaves, True)
            verify_consistency(m, n, proof, roots[m], roots[n])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_proofs_match_brute_force(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=MAX_N))
    m = data.draw(st.integers(min_value=0, max_value=n - 1))
    old = data.draw(st.integers(min_value=1, max_value=n))
    leaves = ALL_LEAVES[:n]
    read = _reader(leaves)
    assert inclusion_proof(m, n, read) == _path(m, leaves)
    assert consistency_proof(old, n, read) == _subproof(old, leaves, True)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tampered_proofs_are_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=MAX_N))
    m = data.draw(st.integers(min_value=0, max_value=n - 1))
    leaves = ALL_LEAVES[:n]
    root = _mth(leaves)
    proof = inclusion_proof(m, n, _reader(leaves))
    # truncated, extended, or one bit flipped: all must fail
    with pytest.raises(ProofError):
        verify_inclusion(leaves[m], m, n, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[m], m, n, [*proof, root], root)
    i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    with pytest.raises(ProofError):
        verify_inclusion(leaves[m], m, n, bad, root)
    # wrong index or wrong leaf
    other = (m + 1) % n
    with pytest.raises(ProofError):
        verify_inclusion(leaves[other], m, n, proof, root)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tampered_consistency_proofs_are_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=MAX_N))
    old = data.draw(st.integers(min_value=1, max_value=n - 1))
    leaves = ALL_LEAVES[:n]
    old_root, new_root = _mth(leaves[:old]), _mth(leaves)
    proof = consistency_proof(old, n, _reader(leaves))
    with pytest.raises(ProofError):
        verify_consistency(old, n, proof[:-1], old_root, new_root)
    with pytest.raises(ProofError):
        verify_consistency(old, n, [*proof, new_root], old_root, new_root)
    # a forked history: same old size, different content
    forked = _mth([leaf_hash(b"forged"), *leaves[1:old]])
    with pytest.raises(ProofError):
        verify_consistency(old, n, proof, forked, new_root)


def test_proof_error_is_an_integrity_error() -> None:
    assert issubclass(ProofError, IntegrityError)


def test_bad_arguments_to_generators() -> None:
    read = _reader(ALL_LEAVES[:4])
    with pytest.raises(ValueError):
        inclusion_proof(4, 4, read)
    with pytest.raises(ValueError):
        consistency_proof(0, 4, read)
    with pytest.raises(ValueError):
        consistency_proof(5, 4, read)
    assert consistency_proof(4, 4, read) == []


def test_compact_range_reports_completed_subtrees() -> None:
    cr = CompactRange()
    done = []
    for i, leaf in enumerate(ALL_LEAVES[:8]):
        done.append([(lvl, idx) for lvl, idx, _ in cr.append(leaf)])
        assert cr.size == i + 1
    assert done[0] == [(0, 0)]
    assert done[1] == [(0, 1), (1, 0)]
    assert done[3] == [(0, 3), (1, 1), (2, 0)]
    assert done[7] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert [(lvl, idx) for lvl, idx, _ in cr.nodes] == [(3, 0)]
    copy = cr.copy()
    copy.append(ALL_LEAVES[8])
    assert cr.size == 8 and copy.size == 9
    with pytest.raises(ProofError):
        cr.append(b"short")
