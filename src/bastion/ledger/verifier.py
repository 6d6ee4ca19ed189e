"""An auditor's client for a C2SP tlog-tiles log. It imports no server code.

Given only the log's URL and verifier key it:

1. fetches ``<prefix>/checkpoint`` and checks the log's signature (and, if asked, a quorum of
   witness cosignatures);
2. fetches every entry bundle and every tile (partial ones too) and checks, bottom-up, that each
   bundle's entries hash to its level-0 tile and that each tile hash at level L >= 1 is the root
   of the full tile below it;
3. recomputes the root from the tiles and compares it with the checkpoint;
4. checks the new tree against the last checkpoint it verified, kept in ``state_dir`` per origin:
   the old root is recomputed *from the new tiles* (full tiles are immutable, so a rewritten or
   forked history cannot reproduce it), and a standard RFC 9162 consistency proof built from
   the tiles is verified too. A log that shrank, or shows a different root for a size already
   seen, is reported.

Only then is the new checkpoint stored. With ``incremental=True`` only the tiles and bundles that
changed since the stored (fully verified) checkpoint are fetched: every hash that is not
recomputed from fresh data lies in the old tree and is pinned by the stored root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bastion.clock import Clock, SystemClock, iso
from bastion.errors import IntegrityError, LedgerUnavailable
from bastion.ledger import merkle
from bastion.ledger.checkpoint import Checkpoint
from bastion.ledger.cosignature import CosignatureVerifier, Cosigner, open_cosigned_checkpoint
from bastion.ledger.merkle import ProofError
from bastion.ledger.note import NoteError, NoteVerifier
from bastion.ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileError,
    TileNodeReader,
    TileRef,
    bundles_for_size,
    decode_entry_bundle,
    entries_path,
    level_width,
    tile_hashes,
    tile_path,
    tile_root,
    tiles_for_size,
)

Progress = Callable[[int, int], None]
"""(resources fetched so far, total to fetch)."""

STATE_VERSION = 1


class VerificationError(IntegrityError):
    """The log's data does not match its signed checkpoint."""


class ConsistencyError(VerificationError):
    """The log shrank, forked, or rewrote history since the checkpoint this auditor last saw."""


@dataclass(frozen=True)
class VerificationResult:
    origin: str
    size: int
    root_hash: bytes
    previous_size: int | None
    entries_checked: int
    tiles_fetched: int
    bundles_fetched: int
    bytes_fetched: int
    elapsed_s: float
    incremental: bool
    cosigners: tuple[Cosigner, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "origin": self.origin,
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "previous_size": self.previous_size,
            "entries_checked": self.entries_checked,
            "tiles_fetched": self.tiles_fetched,
            "bundles_fetched": self.bundles_fetched,
            "bytes_fetched": self.bytes_fetched,
            "elapsed_s": round(self.elapsed_s, 3),
            "incremental": self.incremental,
            "cosigners": [c.to_json() for c in self.cosigners],
        }


@dataclass(frozen=True)
class _State:
    checkpoint: Checkpoint
    note: str
    complete: bool
    verified_at: str


def log_prefix(base_url: str) -> str:
    """The tlog-tiles prefix: `base_url` if it ends in /log or /log/, else base_url + /log/."""
    url = base_url.rstrip("/")
    if not url.endswith("/log"):
        url += "/log"
    return url + "/"


def _state_file_name(origin: str) -> str:
    # Readable and collision-free: a sanitized origin plus a digest of the exact origin.
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", origin)[:80]
    digest = hashlib.sha256(origin.encode()).hexdigest()[:16]
    return f"{safe}-{digest}.json"


class LogVerifier:
    """Verifies a tiled log end to end; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        vkey: str,
        state_dir: Path | str,
        witness_vkeys: Sequence[str] = (),
        quorum: int = 0,
        http: httpx.Client | None = None,
        *,
        workers: int = 8,
        clock: Clock | None = None,
    ) -> None:
        self.prefix = log_prefix(base_url)
        self.log_verifier = NoteVerifier.from_vkey(vkey)
        self.witnesses = [CosignatureVerifier.from_vkey(w) for w in witness_vkeys]
        self.quorum = quorum
        self.state_dir = Path(state_dir)
        self.workers = max(1, workers)
        self.clock: Clock = clock or SystemClock()
        self._own_http = http is None
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(30.0), headers={"Accept-Encoding": "gzip, identity"}
        )
        self._bytes = 0

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> LogVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP ------------------------------------------------------------------------------

    def _get(self, path: str, *, allow_missing: bool = False, fresh: bool = False) -> bytes | None:
        url = self.prefix + path
        headers = {"Cache-Control": "no-cache"} if fresh else None
        try:
            resp = self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise LedgerUnavailable(f"cannot fetch {url}: {type(exc).__name__}") from None
        if resp.status_code == 404 and allow_missing:
            return None
        if resp.status_code != 200:
            raise LedgerUnavailable(f"cannot fetch {url}: HTTP {resp.status_code}")
        self._bytes += len(resp.content)
        return resp.content

    def _get_tile(self, level: int, index: int, width: int) -> bytes:
        data = self._get(tile_path(level, index, width), allow_missing=width < TILE_WIDTH)
        if data is None:
            # The spec lets a log drop a partial tile once the full one exists.
            full = self._get(tile_path(level, index))
            assert full is not None
            return full[: width * merkle.HASH_SIZE]
        return data

    def _get_bundle(self, index: int, width: int) -> bytes:
        data = self._get(entries_path(index, width), allow_missing=width < TILE_WIDTH)
        if data is None:
            full = self._get(entries_path(index))
            assert full is not None
            return _bundle_prefix(full, width)
        return data

    def fetch_checkpoint(self) -> str:
        data = self._get("checkpoint", fresh=True)  # mutable: never from a stale cache
        assert data is not None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("checkpoint is not valid UTF-8") from None

    def _fetch_ordered(
        self, jobs: Sequence[Callable[[], bytes]], progress: Callable[[], None]
    ) -> Iterator[bytes]:
        """Run fetches on a thread pool, a bounded window ahead, yielding results in order."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tlog-fetch")
        window: deque[Future[bytes]] = deque()
        it = iter(jobs)
        try:
            for job in it:
                window.append(pool.submit(job))
                if len(window) >= self.workers * 4:
                    break
            while window:
                fut = window.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    window.append(pool.submit(nxt))
                result = fut.result()
                progress()
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # --- state -----------------------------------------------------------------------------

    def _state_path(self, origin: str) -> Path:
        return self.state_dir / _state_file_name(origin)

    def _load_state(self, origin: str) -> _State | None:
        path = self._state_path(origin)
        try:
            raw = json.loads(path.read_text())
            note = raw["checkpoint"]
            complete = bool(raw.get("complete", False))
            verified_at = str(raw.get("verified_at", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise VerificationError(f"auditor state file {path} is unreadable") from None
        # The stored checkpoint must still carry the log's valid signature.
        try:
            cp = open_cosigned_checkpoint(note, self.log_verifier).checkpoint
        except IntegrityError as exc:
            raise VerificationError(f"auditor state file {path} is not valid: {exc}") from None
        return _State(cp, note, complete, verified_at)

    def _save_state(self, note: str, cp: Checkpoint, complete: bool) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self._state_path(cp.origin)
        tmp = path.with_suffix(".tmp")
        record = {
            "version": STATE_VERSION,
            "origin": cp.origin,
            "size": cp.size,
            "root_hash": cp.root_hash.hex(),
            "checkpoint": note,
            "complete": complete,
            "verified_at": iso(self.clock.now()),
        }
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # --- verification ----------------------------------------------------------------------

    def verify(
        self, *, incremental: bool = False, progress: Progress | None = None
    ) -> VerificationResult:
        """Verify the log; raise on any failure; store the checkpoint only on success."""
        started = time.perf_counter()
        self._bytes = 0
        note = self.fetch_checkpoint()
        cosigned = open_cosigned_checkpoint(note, self.log_verifier, self.witnesses, self.quorum)
        cp = cosigned.checkpoint
        size = cp.size

        prev = self._load_state(cp.origin)
        if prev is not None:
            old = prev.checkpoint
            if size < old.size:
                raise ConsistencyError(
                    f"log shrank: it now claims size {size}, but this auditor saw a signed "
                    f"checkpoint of size {old.size} ({prev.verified_at})"
                )
            if size == old.size and cp.root_hash != old.root_hash:
                raise ConsistencyError(
                    f"log forked: two different signed roots for size {size} "
                    f"({old.root_hash.hex()[:16]}... seen {prev.verified_at}, now "
                    f"{cp.root_hash.hex()[:16]}...)"
                )
        since = prev.checkpoint.size if (incremental and prev is not None and prev.complete) else 0

        old_size = 0 if prev is None else prev.checkpoint.size
        reader, entries, tiles_n, bundles_n = self._check_tiles(size, since, old_size, progress)

        if merkle.root(size, reader) != cp.root_hash:
            raise VerificationError(
                f"the root recomputed from the tiles does not match the checkpoint (size {size})"
            )
        if prev is not None and prev.checkpoint.size > 0:
            old = prev.checkpoint
            if merkle.root(old.size, reader) != old.root_hash:
                raise ConsistencyError(
                    f"log history was rewritten: the tiles no longer reproduce the root of size "
                    f"{old.size} this auditor verified ({prev.verified_at})"
                )
            proof = merkle.consistency_proof(old.size, size, reader)
            try:
                merkle.verify_consistency(old.size, size, proof, old.root_hash, cp.root_hash)
            except ProofError as exc:
                raise ConsistencyError(f"consistency proof from size {old.size}: {exc}") from None

        self._save_state(note, cp, complete=True)
        return VerificationResult(
            origin=cp.origin,
            size=size,
            root_hash=cp.root_hash,
            previous_size=None if prev is None else prev.checkpoint.size,
            entries_checked=entries,
            tiles_fetched=tiles_n + reader.fetched,
            bundles_fetched=bundles_n,
            bytes_fetched=self._bytes,
            elapsed_s=time.perf_counter() - started,
            incremental=since > 0,
            cosigners=cosigned.cosigners,
        )

    def _check_tiles(
        self, size: int, since: int, old_size: int, progress: Progress | None
    ) -> tuple[TileNodeReader, int, int, int]:
        """Fetch and check tiles bottom-up; return a reader over them and what was fetched."""
        refs = list(tiles_for_size(size, since=since))
        bundles = list(bundles_for_size(size, since=since))
        total = len(refs) + len(bundles)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if progress is not None:
            progress(0, total)

        reader = TileNodeReader(size, self._get_tile)
        keep_level0 = _level0_tiles_needed(size, old_size)
        entries_checked = 0

        # Level 0: each entry bundle against its tile.
        level0 = [r for r in refs if r.level == 0]
        jobs: list[Callable[[], bytes]] = []
        for ref in level0:
            jobs.append(_bind(self._get_bundle, ref.index, ref.width))
            jobs.append(_bind(self._get_tile, 0, ref.index, ref.width))
        results = self._fetch_ordered(jobs, tick)
        # Roots of the full tiles checked in this run: what the level above must hold.
        roots: dict[int, bytes] = {}
        sha256 = hashlib.sha256
        for ref in level0:
            bundle_data = next(results)
            tile_data = next(results)
            if len(tile_data) != ref.width * merkle.HASH_SIZE:
                raise VerificationError(
                    f"tile {ref.path}: {len(tile_data)} bytes, expected {ref.width} hashes"
                )
            where = entries_path(ref.index, ref.width)
            try:
                entries = decode_entry_bundle(bundle_data, ref.width)
            except TileError as exc:
                raise VerificationError(f"entry bundle {where}: {exc}") from None
            leaves = [sha256(b"\x00" + e).digest() for e in entries]
            if b"".join(leaves) != tile_data:
                bad = next(i for i, h in enumerate(leaves) if h != tile_data[32 * i : 32 * i + 32])
                raise VerificationError(
                    f"entry {ref.index * TILE_WIDTH + bad} ({where}) does not hash to its "
                    f"level-0 tile ({ref.path})"
                )
            entries_checked += len(entries)
            if ref.is_full:
                roots[ref.index] = tile_root(leaves)
            if (0, ref.index) in keep_level0:
                reader.add_tile(0, ref.index, leaves)

        # Levels >= 1: each hash is the root of a full tile below, checked in this run, or an
        # old one (incremental mode) pinned by the stored root.
        for level in range(1, max((r.level for r in refs), default=0) + 1):
            level_refs = [r for r in refs if r.level == level]
            jobs = [_bind(self._get_tile, level, r.index, r.width) for r in level_refs]
            old_full_children = level_width(since, level - 1) >> TILE_HEIGHT
            next_roots: dict[int, bytes] = {}
            for ref, data in zip(level_refs, self._fetch_ordered(jobs, tick), strict=True):
                hashes = _tile(data, ref)
                for p, h in enumerate(hashes):
                    child = ref.index * TILE_WIDTH + p
                    want = roots.get(child)
                    if want is None:
                        if child >= old_full_children:
                            raise VerificationError(f"tile {ref.path}: no child tile {child}")
                        continue  # in the old tree: pinned by the stored root below
                    if h != want:
                        raise VerificationError(
                            f"tile {ref.path} hash {p} is not the root of tile "
                            f"{tile_path(level - 1, child)}"
                        )
                if ref.is_full:
                    next_roots[ref.index] = tile_root(hashes)
                reader.add_tile(level, ref.index, hashes)
            roots = next_roots
        return reader, entries_checked, len(refs), len(bundles)


def _bind(fn: Callable[..., bytes], *args: int) -> Callable[[], bytes]:
    return lambda: fn(*args)


def _tile(data: bytes, ref: TileRef) -> list[bytes]:
    try:
        return tile_hashes(data, ref.width)
    except TileError as exc:
        raise VerificationError(f"tile {ref.path}: {exc}") from None


def _bundle_prefix(data: bytes, width: int) -> bytes:
    """The first `width` entries of a full bundle, still encoded (partial-bundle fallback)."""
    pos = 0
    for _ in range(width):
        if pos + 2 > len(data):
            break
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    return data[:pos]


def _level0_tiles_needed(size: int, old_size: int) -> set[tuple[int, int]]:
    """Level-0 tiles that the root, the old root and the consistency proof will read.

    Found by running those computations against a recording reader, so only O(log n) level-0
    tiles are kept in memory while all of them stream past.
    """
    touched: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> bytes:
        tile_level, sub = divmod(level, TILE_HEIGHT)
        touched.add((tile_level, (index << sub) >> TILE_HEIGHT))
        return bytes(merkle.HASH_SIZE)

    merkle.root(size, record)
    if 0 < old_size <= size:
        merkle.root(old_size, record)
        merkle.consistency_proof(old_size, size, record)
    return {t for t in touched if t[0] == 0}
