"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof verification.

Pure functions, no I/O. Proof *generation* reads the tree through a `NodeReader`, a callable
returning the hash of a *perfect* subtree (level, index): the subtree of 2**level leaves starting at
leaf ``index << level``. Both the log (reading its stored tiles) and the verifier (reading fetched
tiles) answer those calls, so the same code serves both and can be checked against brute force.

Proof *verification* follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) literally,
and raises `ProofError` (an `IntegrityError`) on any failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bastion.errors import IntegrityError

HASH_SIZE = 32

NodeReader = Callable[[int, int], bytes]
"""(level, index) -> hash of the perfect subtree over leaves [index<<level, (index+1)<<level)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1)."""


class ProofError(IntegrityError):
    """An inclusion or consistency proof does not verify."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, bottom-up (RFC 9162 §2.1.1). Empty -> EMPTY_ROOT."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    sha256 = hashlib.sha256  # hot loop: the verifier hashes every node of the tree here
    while len(level) > 1:
        # Pair up; an odd last node is promoted unchanged, which is exactly RFC 6962's split at
        # the largest power of two when applied level by level.
        nxt = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def subtree_hash(begin: int, end: int, node: NodeReader) -> bytes:
    """MTH(D[begin:end]) for an RFC 6962 subtree range (begin aligned), from perfect nodes.

    Perfect ranges come straight from the reader; others split at the largest power of two.
    """
    n = end - begin
    if n <= 0:
        raise ValueError(f"empty subtree range [{begin}, {end})")
    if n & (n - 1) == 0 and begin % n == 0:
        level = n.bit_length() - 1
        return node(level, begin >> level)
    k = _largest_power_of_two_below(n)
    return node_hash(subtree_hash(begin, begin + k, node), subtree_hash(begin + k, end, node))


def root(size: int, node: NodeReader) -> bytes:
    """Root hash of the tree of `size` leaves, built from perfect-subtree hashes."""
    if size < 0:
        raise ValueError("tree size must be non-negative")
    if size == 0:
        return EMPTY_ROOT
    return subtree_hash(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeReader) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf-to-root order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    begin, end, m = 0, size, index
    # Walk down from the root, collecting the sibling of each step; reverse at the end.
    while end - begin > 1:
        k = _largest_power_of_two_below(end - begin)
        if m < k:
            proof.append(subtree_hash(begin + k, end, node))
            end = begin + k
        else:
            proof.append(subtree_hash(begin, begin + k, node))
            begin, m = begin + k, m - k
    proof.reverse()
    return proof


def consistency_proof(old: int, new: int, node: NodeReader) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 §2.1.4.1. Requires 0 < old <= new; old == new gives []."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    proof: list[bytes] = []
    begin, end, m, complete = 0, new, old, True
    while True:
        n = end - begin
        if m == n:
            if not complete:
                proof.append(subtree_hash(begin, end, node))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(subtree_hash(begin + k, end, node))
            end = begin + k
        else:
            proof.append(subtree_hash(begin, begin + k, node))
            begin, m, complete = begin + k, m - k, False
    proof.reverse()
    return proof


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2 steps 1-5, minus the compare)."""
    if size <= 0 or not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf, "leaf hash")
    fn, sn, r = index, size - 1, leaf
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
        if sn == 0:
            raise ProofError(f"inclusion proof is too long ({len(proof)} elements)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short ({len(proof)} elements)")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that `leaf` (a leaf hash) is at `index` in the tree of `size` with `root_hash`."""
    _check_hash(root_hash, "root hash")
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root_hash:
        raise ProofError(f"inclusion proof for index {index} does not lead to the tree root")


def verify_consistency(
    old: int, new: int, proof: Sequence[bytes] | None, old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (old, old_root) is a prefix of (new, new_root), RFC 9162 §2.1.4.2.

    A consistency check from the empty tree proves nothing and is rejected, as is any proof
    for equal sizes other than the empty one.
    """
    path = list(proof or ())
    if old <= 0:
        raise ProofError(f"no consistency proof can start from tree size {old}")
    if new < old:
        raise ProofError(f"tree shrank from size {old} to {new}")
    if old == new:
        if path:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old}")
        return
    if not path:
        raise ProofError("consistency proof is empty")
    for i, p in enumerate(path):
        _check_hash(p, f"proof element {i}")
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    # Step 2: when the old tree is perfect its root is the proof's implicit first node.
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof is too long ({len(proof or ())} elements)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof is too short ({len(proof or ())} elements)")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new})")


@dataclass
class CompactRange:
    """The right border of an append-only tree: the perfect subtrees covering leaves [0, size).

    For the sequencer: `append(leaf_hash)` returns the perfect subtrees that the new leaf
    completes (the leaf itself at level 0, then every node it closes), which is exactly what must
    be written into tiles; `root()` is the tree head. `from_tree(size, node)` resumes from storage.
    Memory is O(log size).
    """

    size: int = 0
    # (level, index, hash), strictly decreasing levels, left to right.
    nodes: list[tuple[int, int, bytes]] = field(default_factory=list)

    @classmethod
    def from_tree(cls, size: int, node: NodeReader) -> CompactRange:
        """Rebuild the border of a tree of `size` leaves from its stored perfect subtrees."""
        nodes: list[tuple[int, int, bytes]] = []
        begin = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                index = begin >> level
                nodes.append((level, index, node(level, index)))
                begin += 1 << level
        return cls(size=size, nodes=nodes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the (level, index, hash) of each subtree it completes."""
        _check_hash(leaf, "leaf hash")
        completed = [(0, self.size, leaf)]
        level, index, h = 0, self.size, leaf
        while self.nodes and self.nodes[-1][0] == level:
            _, left_index, left = self.nodes.pop()
            level, index, h = level + 1, left_index >> 1, node_hash(left, h)
            completed.append((level, index, h))
        self.nodes.append((level, index, h))
        self.size += 1
        return completed

    def extend(self, leaves: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Append several leaf hashes; return every subtree they complete, in order."""
        out: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            out.extend(self.append(leaf))
        return out

    def root(self) -> bytes:
        """The tree head of the current size."""
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][2]
        for _, _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactRange:
        return CompactRange(size=self.size, nodes=list(self.nodes))
