"""C2SP tlog-tiles: paths, encodings, tile coverage, and proofs computed from tiles alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import InputError
from bastion.ledger import merkle, tiles
from bastion.ledger.merkle import leaf_hash, root_from_leaf_hashes
from bastion.ledger.tiles import (
    TILE_WIDTH,
    TileError,
    TileNodeReader,
    TilePathError,
    decode_entry_bundle,
    encode_entry_bundle,
    entries_path,
    parse_entries_path,
    parse_tile_path,
    tile_hashes,
    tile_path,
    tiles_for_size,
)


def test_paths_from_the_spec() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(0, 1234, 5) == "tile/0/x001/234.p/5"
    assert tile_path(3, 0) == "tile/3/000"
    assert tile_path(1, 999) == "tile/1/999"
    assert tile_path(1, 1000) == "tile/1/x001/000"
    assert entries_path(0, 1) == "tile/entries/000.p/1"
    assert entries_path(1234067) == "tile/entries/x001/x234/067"


@given(
    level=st.integers(min_value=0, max_value=63),
    index=st.integers(min_value=0, max_value=10**12),
    width=st.integers(min_value=1, max_value=256),
)
def test_path_round_trip(level: int, index: int, width: int) -> None:
    assert parse_tile_path(tile_path(level, index, width)) == (level, index, width)
    assert parse_entries_path(entries_path(index, width)) == (index, width)
    assert parse_tile_path("/" + tile_path(level, index, width)) == (level, index, width)


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",  # not 3 digits
        "tile/0/0001",
        "tile/00/000",  # leading zero in level
        "tile/64/000",  # level too high
        "tile/-1/000",
        "tile/0/x000/001",  # leading zero group: non-canonical
        "tile/0/001/x002",  # x on the last element
        "tile/0/x001/x002",
        "tile/0/001/002",  # x missing
        "tile/0/000.p/0",  # width 0
        "tile/0/000.p/256",  # a full tile is never partial
        "tile/0/000.p/05",  # leading zero in width
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/0/000/",
        "tile/0/000?x=1",
        "tile/0/00a",
        "tile/entries/000",  # an entries path is not a tile path
        "tile/0/x1234/000",
        "tile//000",
        "tile/0/٠٠٠",  # non-ASCII digits
    ],
)
def test_malformed_tile_paths_rejected(path: str) -> None:
    with pytest.raises(TilePathError):
        parse_tile_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "tile/entries/1",
        "tile/entries/x000/001",
        "tile/entries/000.p/256",
        "tile/entries/000.p/0",
        "tile/0/000",
        "tile/entries/000.p/1/",
        "entries/000",
    ],
)
def test_malformed_entries_paths_rejected(path: str) -> None:
    with pytest.raises(TilePathError):
        parse_entries_path(path)


def test_tile_path_error_is_input_error() -> None:
    assert issubclass(TilePathError, InputError)


def test_entry_bundle_round_trip_and_limits() -> None:
    entries = [b"", b"a", b"x" * 300, bytes(range(256)), b"y" * 0xFFFF]
    data = encode_entry_bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:5] == b"\x00\x01a"
    assert decode_entry_bundle(data) == entries
    assert decode_entry_bundle(data, width=5) == entries
    with pytest.raises(TileError):
        decode_entry_bundle(data, width=4)
    with pytest.raises(TileError):
        decode_entry_bundle(data[:-1])
    with pytest.raises(TileError):
        decode_entry_bundle(data + b"\x00")  # dangling half length prefix
    with pytest.raises(InputError):
        encode_entry_bundle([b"z" * 0x10000])
    with pytest.raises(ValueError):
        encode_entry_bundle([b""] * 257)


def test_tile_hashes_strict() -> None:
    h = [leaf_hash(bytes([i])) for i in range(3)]
    data = tiles.encode_tile(h)
    assert tile_hashes(data) == h
    assert tile_hashes(data, 3) == h
    for bad in (b"", data[:-1], data + b"\x00", data * 100):
        with pytest.raises(TileError):
            tile_hashes(bad)
    with pytest.raises(TileError):
        tile_hashes(data, 2)


def test_tiles_for_size_matches_the_spec_example() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0
    # tile of width 112, one full level 1 tile, one partial level 1 tile of width 17, and one
    # partial level 2 tile of width 1."
    refs = list(tiles_for_size(70_000))
    level0 = [r for r in refs if r.level == 0]
    assert len([r for r in level0 if r.is_full]) == 273
    assert [r.width for r in level0 if not r.is_full] == [112]
    assert [(r.index, r.width) for r in refs if r.level == 1] == [(0, 256), (1, 17)]
    assert [(r.index, r.width) for r in refs if r.level == 2] == [(0, 1)]
    assert [(r.level, r.width) for r in tiles_for_size(256)] == [(0, 256), (1, 1)]
    assert list(tiles_for_size(0)) == []
    assert len(list(tiles.bundles_for_size(70_000))) == 274


def test_incremental_tiles() -> None:
    # Only new full tiles and grown partials; old full tiles are immutable.
    refs = list(tiles_for_size(600, since=300))
    assert [(r.level, r.index, r.width) for r in refs] == [
        (0, 1, 256),
        (0, 2, 88),
        (1, 0, 2),
    ]
    assert list(tiles_for_size(300, since=300)) == []
    assert [(r.level, r.index, r.width) for r in tiles_for_size(512, since=300)] == [
        (0, 1, 256),
        (1, 0, 2),
    ]
    with pytest.raises(ValueError):
        list(tiles_for_size(10, since=11))


def _build_tiles(n: int) -> dict[tuple[int, int, int], bytes]:
    """Tiles of a tree of n leaves, built level by level (the way a log would serve them)."""
    store: dict[tuple[int, int, int], bytes] = {}
    level_hashes = [leaf_hash(f"e{i}".encode()) for i in range(n)]
    level = 0
    while level_hashes:
        nxt = []
        for t in range(0, len(level_hashes), TILE_WIDTH):
            chunk = level_hashes[t : t + TILE_WIDTH]
            store[(level, t // TILE_WIDTH, len(chunk))] = b"".join(chunk)
            if len(chunk) == TILE_WIDTH:
                nxt.append(root_from_leaf_hashes(chunk))
        level_hashes, level = nxt, level + 1
    return store


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 511, 512, 1000, 65536, 65537, 70_000])
def test_proofs_from_tiles(n: int) -> None:
    store = _build_tiles(n)
    leaves = [leaf_hash(f"e{i}".encode()) for i in range(n)]
    want_root = root_from_leaf_hashes(leaves)

    def fetch(level: int, index: int, width: int) -> bytes:
        return store[(level, index, width)]

    reader = TileNodeReader(n, fetch)
    assert merkle.root(n, reader) == want_root
    for m in {0, n // 2, n - 1}:
        proof = merkle.inclusion_proof(m, n, reader)
        merkle.verify_inclusion(leaves[m], m, n, proof, want_root)
    for old in {1, n // 3 or 1, n - 1 or 1}:
        proof = merkle.consistency_proof(old, n, reader)
        merkle.verify_consistency(old, n, proof, root_from_leaf_hashes(leaves[:old]), want_root)
    assert reader.fetched <= len(store)


def test_tile_reader_rejects_wrong_width_tile() -> None:
    store = _build_tiles(300)

    def fetch(level: int, index: int, width: int) -> bytes:
        return store[(level, index, width)][:-32]  # served one hash short

    with pytest.raises(TileError):
        merkle.root(300, TileNodeReader(300, fetch))


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=TILE_WIDTH))
def test_bundle_leaf_hashes_are_the_leaf_hashes_of_the_decoded_entries(
    entries: list[bytes],
) -> None:
    data = encode_entry_bundle(entries)
    assert tiles.bundle_leaf_hashes(data, len(entries)) == b"".join(map(leaf_hash, entries))


def test_bundle_leaf_hashes_is_as_strict_as_decoding() -> None:
    entries = [b"a", b"bb", b"", b"dddd"]
    data = encode_entry_bundle(entries)
    for bad, width in [
        (data[:-1], 4),  # truncated inside the last entry
        (data[:-5], 4),  # ends after a whole entry, one short
        (data + b"\x00", 4),  # a dangling half length prefix
        (data, 3),  # more entries than the width
        (data, 5),  # fewer
    ]:
        with pytest.raises(tiles.TileError):
            tiles.bundle_leaf_hashes(bad, width)
