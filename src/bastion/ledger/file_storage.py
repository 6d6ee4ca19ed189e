"""A log stored as static files in the C2SP tlog-tiles layout, like Tessera's POSIX driver.

Any web server or CDN whose ``/log/`` serves the directory serves the log, with no Bastion
code: the verifier (`verifier.LogVerifier`) and ``bastion ledger verify`` read it as they read
``bastion serve``. Layout, under the directory:

- ``checkpoint``: the newest published checkpoint (signed, with the quorum of cosignatures);
- ``tile/<L>/<N>`` and ``tile/<L>/<N>.p/<W>``: Merkle tiles, full and partial (``x``-prefixed
  three-digit path segments, `tiles.tile_path`);
- ``tile/entries/<N>`` and ``tile/entries/<N>.p/<W>``: entry bundles;
- ``.state/``: what only writers read: ``size`` (the integrated tree size, the
  compare-and-swap target), ``latest.json`` and ``published.json`` (the newest checkpoint, and
  the newest with the quorum, with their cosignatures), the lock files and ``tmp/``.

Every file is written whole: to ``.state/tmp``, fsynced, renamed into place, its directory
fsynced. A commit makes all its tiles and bundles durable first and moves ``size`` last, so a
crash at any moment leaves the tree at the old size or at the new one, never between (files a
crashed commit wrote past the size are ignored and overwritten). The checkpoint is written
after the commits it covers. Partial tiles are kept when their tile grows, so a client that
read an older checkpoint still finds its tiles. Commits hold ``.state/lock`` (``flock``, which
the kernel releases when a process dies), and compare-and-swap the size under it, so two
processes can never fork the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bastion.durable import fsync_dir
from bastion.errors import IntegrityError, StoreUnavailable
from bastion.ledger.log_storage import BundleParts, StoredCheckpoint, Writes
from bastion.ledger.tiles import (
    TILE_WIDTH,
    TileError,
    bundle_prefix,
    entries_path,
    tile_path,
    tile_width_for,
)

STATE = ".state"
_SIZE = "size"
_LATEST = "latest.json"
_PUBLISHED = "published.json"
_COMMIT_LOCK = "lock"
_PUBLISH_LOCK = "publish.lock"


class FileLogStorage:
    """`LogStorage` as static tlog-tiles files under `root` (see the module docstring)."""

    side_writes_in_commit = False

    def __init__(self, root: Path | str, *, quorum: int = 0, lock_timeout: float = 8.0) -> None:
        self.root = Path(root)
        self.quorum = quorum
        self._state = self.root / STATE
        self._tmp = self._state / "tmp"
        self._lock_timeout = lock_timeout
        # flock excludes other open files, in this process too; this serializes our own threads.
        self._local = threading.Lock()

    @property
    def description(self) -> str:
        return f"tlog-tiles files in {self.root}"

    def create(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        (self.root / "tile").mkdir(exist_ok=True)
        with self._locked(_COMMIT_LOCK):
            if not (self._state / _SIZE).exists():
                self._put([(self._state / _SIZE, b"0")])

    # --- writing -----------------------------------------------------------------------------

    def append(self, old: int, new: int, writes: Writes) -> bool:
        with self._locked(_COMMIT_LOCK):
            if self._size() != old:
                return False
            self._commit(old, new, writes)
        return True

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[_FileTransaction]:
        with self._locked(_COMMIT_LOCK):
            yield _FileTransaction(self)

    def _commit(self, old: int, new: int, writes: Writes) -> None:
        """Tiles and bundles durable first, then the size (holding the commit lock)."""
        files: list[tuple[Path, bytes]] = []
        for level, index, hashes in writes.tiles:
            files.append((self.root / tile_path(level, index, len(hashes) // 32), hashes))
        for index, width, data in writes.bundles:
            files.append((self.root / entries_path(index, width), data))
        for index, first, count, data in writes.chunks:
            if first:  # continues the partial bundle the last commit stored
                before = self.read_bundle(index, first)
                if before is None:
                    raise IntegrityError(f"stored entry bundle {index} does not hold {first}")
                data = before + data
            files.append((self.root / entries_path(index, first + count), data))
        self._put(files)
        self._put([(self._state / _SIZE, str(new).encode())])

    def _put(self, files: list[tuple[Path, bytes]]) -> None:
        """Write files atomically and durably: temp files fsynced, renamed, directories
        fsynced. Raises StoreUnavailable (nothing moved past a rename that failed)."""
        try:
            staged: list[tuple[Path, Path]] = []
            for path, data in files:
                tmp = self._tmp / uuid.uuid4().hex
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                staged.append((tmp, path))
            directories: set[Path] = set()
            for tmp, path in staged:
                try:
                    os.replace(tmp, path)
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    directories.update(_new_parents(path.parent, self.root))
                    os.replace(tmp, path)
                directories.add(path.parent)
            for directory in directories:
                fsync_dir(directory)
        except OSError as exc:
            raise StoreUnavailable(
                f"{self.description}: write failed ({type(exc).__name__}: {exc.strerror})"
            ) from None

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold lock file `name` (flock), waiting at most the lock timeout."""
        with self._local:
            try:
                fd = os.open(self._state / name, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreUnavailable(f"{self.description}: {exc.strerror}") from None
            try:
                deadline = time.monotonic() + self._lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise StoreUnavailable(
                                f"{self.description}: another writer holds {name} past"
                                f" {self._lock_timeout:.0f}s"
                            ) from None
                        time.sleep(0.001)
                yield
            finally:
                os.close(fd)  # releases the lock

    # --- reading -----------------------------------------------------------------------------

    def _size(self) -> int:
        try:
            return int((self._state / _SIZE).read_bytes())
        except FileNotFoundError:
            raise IntegrityError(f"{self.description} has no tree size; was it created?") from None
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"{self.description}: tree size unreadable ({exc})") from None

    def tree_size(self) -> int:
        return self._size()

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        data = _read(self.root / tile_path(level, index, width))
        if data is None and width < TILE_WIDTH:
            # Tolerated: a partial tile that was dropped once its full tile existed.
            full = _read(self.root / tile_path(level, index))
            data = None if full is None else full[: width * 32]
        return data if data is not None and len(data) == width * 32 else None

    def read_bundle(self, index: int, width: int) -> bytes | None:
        data = _read(self.root / entries_path(index, width))
        if data is None and width < TILE_WIDTH:
            full = _read(self.root / entries_path(index))
            if full is None:
                return None
            try:
                return bundle_prefix(full, width)
            except TileError:
                return None
        return data

    def read_bundle_parts(self, index: int, width: int) -> BundleParts | None:
        data = self.read_bundle(index, width)
        return None if data is None else BundleParts(width, data, 0)

    def read_bundles(self, first: int, last: int) -> list[tuple[int, int, bytes]]:
        size = self._size()
        rows = []
        for index in range(first, last + 1):
            width = tile_width_for(size, 0, index)
            if width == 0:
                break
            data = self.read_bundle(index, width)
            if data is not None:
                rows.append((index, width, data))
        return rows

    # --- checkpoints -------------------------------------------------------------------------

    def latest_checkpoint(self, *, min_witnesses: int = 0) -> StoredCheckpoint | None:
        latest = self._record(_LATEST)
        if latest is None or latest.witnesses >= min_witnesses:
            return latest
        published = self._record(_PUBLISHED)
        return published if published is not None and published.witnesses >= min_witnesses else None

    def store_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        with self._locked(_PUBLISH_LOCK):
            newest = self._record(_LATEST)
            if newest is not None and newest.tree_size >= cp.tree_size:
                return newest  # another process published meanwhile
            self._save(cp)
        return cp

    def record_cosignatures(self, size: int, cosignatures: str, witnesses: int) -> None:
        with self._locked(_PUBLISH_LOCK):
            latest = self._record(_LATEST)
            if latest is None or latest.tree_size != size:
                return  # a newer checkpoint replaced it meanwhile
            self._save(
                StoredCheckpoint(
                    size, latest.root_hash, latest.note, cosignatures, witnesses, latest.created_at
                )
            )

    def _save(self, cp: StoredCheckpoint) -> None:
        """The newest checkpoint; and, once it has the quorum, the public one (last)."""
        record = json.dumps(
            {
                "tree_size": cp.tree_size,
                "root_hash": cp.root_hash.hex(),
                "note": cp.note,
                "cosignatures": cp.cosignatures,
                "witnesses": cp.witnesses,
                "created_at": cp.created_at,
            }
        ).encode()
        self._put([(self._state / _LATEST, record)])
        if cp.witnesses >= self.quorum:
            self._put([(self._state / _PUBLISHED, record)])
            self._put([(self.root / "checkpoint", cp.text.encode())])

    def _record(self, name: str) -> StoredCheckpoint | None:
        data = _read(self._state / name)
        if data is None:
            return None
        try:
            raw = json.loads(data)
            return StoredCheckpoint(
                int(raw["tree_size"]),
                bytes.fromhex(raw["root_hash"]),
                str(raw["note"]),
                str(raw["cosignatures"]),
                int(raw["witnesses"]),
                str(raw["created_at"]),
            )
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{self.description}: {name} is malformed") from None

    def close(self) -> None:
        pass


class _FileTransaction:
    """`LogTransaction` while `FileLogStorage` holds its commit lock."""

    cursor = None

    def __init__(self, storage: FileLogStorage) -> None:
        self._storage = storage

    def tree_size(self) -> int:
        return self._storage.tree_size()

    def read_tile(self, level: int, index: int, width: int) -> bytes | None:
        return self._storage.read_tile(level, index, width)

    def read_bundle_parts(self, index: int, width: int) -> BundleParts | None:
        return self._storage.read_bundle_parts(index, width)

    def write(self, old: int, new: int, writes: Writes) -> None:
        if self._storage.tree_size() != old:
            raise IntegrityError(f"tree size moved under the sequencer (expected {old})")
        self._storage._commit(old, new, writes)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _new_parents(directory: Path, root: Path) -> list[Path]:
    """The directories from `root` down to `directory`'s parent, whose entries just changed."""
    parents = []
    for parent in directory.parents:
        parents.append(parent)
        if parent == root:
            break
    return parents
