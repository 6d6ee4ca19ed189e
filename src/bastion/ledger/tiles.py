"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles) at height 8: paths, tile and bundle encodings.

Pure functions, no I/O. A tile at level L, index N, holds up to 256 consecutive Merkle hashes of
tree level 8*L, starting at node N*256. Full tiles hold 256 hashes and never change; the rightmost
tile of each level may be *partial* (width 1..255, path suffix ``.p/<W>``). Entry bundles mirror
level-0 tiles and hold the entries themselves, each prefixed by its big-endian uint16 length.

`TileNodeReader` turns a tile fetcher into a `merkle.NodeReader`, so inclusion and consistency
proofs (and the root) can be computed from tiles alone, by the log and by auditors alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bastion.errors import InputError, IntegrityError
from bastion.ledger.merkle import HASH_SIZE, root_from_leaf_hashes

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_TILE_LEVEL = 63
MAX_ENTRY_SIZE = 0xFFFF
"""The largest entry an entry bundle can hold (uint16 length prefix)."""

TileFetcher = Callable[[int, int, int], bytes]
"""(level, index, width) -> the raw bytes of that tile."""


class TilePathError(InputError):
    """A tile or entry-bundle path that is not in the spec's canonical form."""


class TileError(IntegrityError):
    """A tile or entry bundle whose content is malformed or does not match the tree."""


@dataclass(frozen=True, order=True)
class TileRef:
    """One Merkle tile: its level, index and width (256 when full)."""

    level: int
    index: int
    width: int

    @property
    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)

    @property
    def is_full(self) -> bool:
        return self.width == TILE_WIDTH


@dataclass(frozen=True, order=True)
class BundleRef:
    """One entry bundle: the entries of the level-0 tile with the same index and width."""

    index: int
    width: int

    @property
    def path(self) -> str:
        return entries_path(self.index, self.width)

    @property
    def is_full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def first_entry(self) -> int:
        return self.index * TILE_WIDTH


# --- paths -------------------------------------------------------------------------------


def _encode_index(index: int) -> str:
    if index < 0:
        raise ValueError(f"tile index must be non-negative, got {index}")
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def _check_width(width: int) -> None:
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width must be between 1 and {TILE_WIDTH}, got {width}")


def _suffix(width: int) -> str:
    _check_width(width)
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``, e.g. level 0, index 1234, width 5 -> ``tile/0/x001/234.p/5``."""
    if not 0 <= level <= MAX_TILE_LEVEL:
        raise ValueError(f"tile level must be between 0 and {MAX_TILE_LEVEL}, got {level}")
    return f"tile/{level}/{_encode_index(index)}{_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``."""
    return f"tile/entries/{_encode_index(index)}{_suffix(width)}"


_LEVEL = r"(0|[1-9][0-9]?)"
_INDEX = r"((?:x[0-9]{3}/)*[0-9]{3})"
_WIDTH = r"(?:\.p/([1-9][0-9]{0,2}))?"
_TILE_RE = re.compile(rf"tile/{_LEVEL}/{_INDEX}{_WIDTH}")
_ENTRIES_RE = re.compile(rf"tile/entries/{_INDEX}{_WIDTH}")


def _parse_index(text: str, path: str) -> int:
    groups = text.split("/")
    if len(groups) > 1 and groups[0] == "x000":
        raise TilePathError(f"tile index has a leading zero group: {path!r}")
    return int("".join(g.lstrip("x") for g in groups))


def _parse_width(text: str | None, path: str) -> int:
    if text is None:
        return TILE_WIDTH
    width = int(text)
    if width >= TILE_WIDTH:
        raise TilePathError(f"partial tile width must be 1..255: {path!r}")
    return width


def _strip(path: str) -> str:
    return path[1:] if path.startswith("/") else path


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) from ``tile/<L>/<N>[.p/<W>]``; rejects any non-canonical form."""
    m = _TILE_RE.fullmatch(_strip(path))
    if m is None:
        raise TilePathError(f"not a tile path: {path!r}")
    level = int(m.group(1))
    if level > MAX_TILE_LEVEL:
        raise TilePathError(f"tile level above {MAX_TILE_LEVEL}: {path!r}")
    return level, _parse_index(m.group(2), path), _parse_width(m.group(3), path)


def parse_entries_path(path: str) -> tuple[int, int]:
    """(index, width) from ``tile/entries/<N>[.p/<W>]``; rejects any non-canonical form."""
    m = _ENTRIES_RE.fullmatch(_strip(path))
    if m is None:
        raise TilePathError(f"not an entry bundle path: {path!r}")
    return _parse_index(m.group(1), path), _parse_width(m.group(2), path)


# --- encodings ---------------------------------------------------------------------------


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Concatenate entries, each prefixed with its big-endian uint16 length."""
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"an entry bundle holds at most {TILE_WIDTH} entries")
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise InputError(
                f"entry is {len(entry)} bytes; an entry bundle holds at most {MAX_ENTRY_SIZE}",
                row=i,
            )
        out += len(entry).to_bytes(2, "big")
        out += entry
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """Split an entry bundle; strict: no truncated entry, and exactly `width` entries if given."""
    data = bytes(data)
    entries: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 2 > end:
            raise TileError("entry bundle ends inside a length prefix")
        n = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if pos + n > end:
            raise TileError(f"entry bundle truncated inside entry {len(entries)}")
        entries.append(data[pos : pos + n])
        pos += n
        if len(entries) > TILE_WIDTH:
            break
    if len(entries) > TILE_WIDTH:
        raise TileError(f"entry bundle holds {len(entries)} entries; at most {TILE_WIDTH}")
    if width is not None and len(entries) != width:
        raise TileError(f"entry bundle holds {len(entries)} entries; expected {width}")
    return entries


def bundle_prefix(data: bytes, width: int) -> bytes:
    """The first `width` entries of an encoded bundle, still encoded (a partial bundle is a
    prefix of the bundle it grows into)."""
    pos, end = 0, len(data)
    for _ in range(width):
        if pos + 2 > end:
            raise TileError("entry bundle is truncated")
        pos += 2 + ((data[pos] << 8) | data[pos + 1])
    if pos > end:
        raise TileError("entry bundle is truncated")
    return data[:pos]


def encode_tile(hashes: Sequence[bytes]) -> bytes:
    """A tile is its hashes concatenated."""
    if not 1 <= len(hashes) <= TILE_WIDTH:
        raise ValueError(f"a tile holds 1..{TILE_WIDTH} hashes, got {len(hashes)}")
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ValueError("tile hashes must be 32 bytes")
    return b"".join(hashes)


def tile_hashes(data: bytes, width: int | None = None) -> list[bytes]:
    """Split a tile into its hashes; strict about the length (and the width, if given)."""
    if len(data) % HASH_SIZE or not HASH_SIZE <= len(data) <= HASH_SIZE * TILE_WIDTH:
        raise TileError(f"tile is {len(data)} bytes, not 1..{TILE_WIDTH} hashes of {HASH_SIZE}")
    if width is not None and len(data) != width * HASH_SIZE:
        raise TileError(f"tile holds {len(data) // HASH_SIZE} hashes; expected {width}")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# Copying a hash state that has already absorbed the RFC 6962 prefix byte is cheaper than
# creating a new one (and concatenating the prefix) for every leaf and node.
_LEAF_PREFIX = hashlib.sha256(b"\x00")
_NODE_PREFIX = hashlib.sha256(b"\x01")
_FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE


def bundle_leaf_hashes(data: bytes, width: int) -> bytes:
    """The level-0 tile an entry bundle must have: the RFC 6962 leaf hashes of its entries,
    concatenated. Strict: TileError unless the bundle holds exactly `width` entries.

    One tight loop over the encoded bundle (no list of entries, no per-entry bytes copies):
    what lets a verifier check a million entries in about the time of the bare hash loop."""
    copy = _LEAF_PREFIX.copy
    view = memoryview(data)
    hashes = []
    pos = 0
    try:
        for _ in range(width):
            end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
            hasher = copy()
            hasher.update(view[pos + 2 : end])  # a short last slice makes pos overshoot below
            hashes.append(hasher.digest())
            pos = end
    except IndexError:
        raise TileError(f"entry bundle ends inside entry {len(hashes)} of {width}") from None
    if pos != len(data):
        what = "is truncated" if pos > len(data) else f"holds more than {width} entries"
        raise TileError(f"entry bundle {what}")
    return b"".join(hashes)


def full_tile_root(tile: bytes) -> bytes:
    """The root of the perfect 256-leaf subtree whose hashes a full tile holds (RFC 6962 node
    hashes, level by level): what the tile contributes to the tile level above."""
    if len(tile) != _FULL_TILE_BYTES:
        raise ValueError("only full tiles are hashed into the level above")
    copy = _NODE_PREFIX.copy
    level = tile
    while len(level) > HASH_SIZE:
        parents = []
        for pair in range(0, len(level), 2 * HASH_SIZE):
            hasher = copy()
            hasher.update(level[pair : pair + 2 * HASH_SIZE])
            parents.append(hasher.digest())
        level = b"".join(parents)
    return level


def tile_root(hashes: Sequence[bytes]) -> bytes:
    """The hash a *full* tile contributes to the tile level above it."""
    if len(hashes) != TILE_WIDTH:
        raise ValueError("only full tiles are hashed into the level above")
    return root_from_leaf_hashes(hashes)


# --- which tiles a tree has --------------------------------------------------------------


def level_width(size: int, level: int) -> int:
    """Number of tree nodes at tile level `level` (tree level 8*level) in a tree of `size`."""
    return size >> (TILE_HEIGHT * level)


def tile_width_for(size: int, level: int, index: int) -> int:
    """Width of tile (level, index) in a tree of `size`; 0 if that tile has no hashes yet."""
    nodes = level_width(size, level)
    full = nodes >> TILE_HEIGHT
    if index < full:
        return TILE_WIDTH
    if index == full:
        return nodes & (TILE_WIDTH - 1)
    return 0


def tile_levels(size: int) -> int:
    """How many tile levels a tree of `size` has (0 for the empty tree)."""
    levels = 0
    while level_width(size, levels) > 0:
        levels += 1
    return levels


def tiles_for_size(size: int, *, since: int = 0) -> Iterator[TileRef]:
    """The tiles of a tree of `size`, level by level, left to right.

    With `since`, only the tiles whose content differs from the tree of size `since` (new full
    tiles, and the partial tiles that grew): what an incremental auditor must fetch.
    """
    if not 0 <= since <= size:
        raise ValueError(f"since={since} must be between 0 and size={size}")
    for level in range(tile_levels(size)):
        nodes = level_width(size, level)
        old_nodes = level_width(since, level)
        last = (nodes - 1) >> TILE_HEIGHT
        first = old_nodes >> TILE_HEIGHT  # old full tiles are immutable: skip them
        for index in range(first, last + 1):
            width = tile_width_for(size, level, index)
            if nodes == old_nodes:
                continue  # the partial tile did not grow
            yield TileRef(level, index, width)


def bundles_for_size(size: int, *, since: int = 0) -> Iterator[BundleRef]:
    """The entry bundles of a tree of `size` (only those changed since `since`, if given)."""
    for ref in tiles_for_size(size, since=since):
        if ref.level == 0:
            yield BundleRef(ref.index, ref.width)


# --- proofs from tiles -------------------------------------------------------------------


class TileNodeReader:
    """A `merkle.NodeReader` over the tiles of a tree of `size`, fetched lazily and cached.

    Node (level, index) lives in tile level ``level // 8``; nodes between tile levels are
    recomputed from the tile's hashes, which is how the spec defines them.
    """

    def __init__(self, size: int, fetch: TileFetcher) -> None:
        self.size = size
        self._fetch = fetch
        self._tiles: dict[tuple[int, int], list[bytes]] = {}
        self.fetched = 0

    def tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        cached = self._tiles.get(key)
        if cached is not None:
            return cached
        width = tile_width_for(self.size, level, index)
        if width == 0:
            raise ValueError(f"tile {level}/{index} is not part of a tree of size {self.size}")
        hashes = tile_hashes(self._fetch(level, index, width), width)
        self.fetched += 1
        self._tiles[key] = hashes
        return hashes

    def add_tile(self, level: int, index: int, hashes: list[bytes]) -> None:
        """Seed the cache with an already-fetched (and checked) tile."""
        self._tiles[(level, index)] = hashes

    def __call__(self, level: int, index: int) -> bytes:
        tile_level, sub = divmod(level, TILE_HEIGHT)
        first = index << sub  # first node at tree level 8*tile_level
        count = 1 << sub
        tile_index, offset = divmod(first, TILE_WIDTH)
        hashes = self.tile(tile_level, tile_index)
        if offset + count > len(hashes):
            raise ValueError(f"node ({level}, {index}) is outside a tree of size {self.size}")
        if count == 1:
            return hashes[offset]
        return root_from_leaf_hashes(hashes[offset : offset + count])
