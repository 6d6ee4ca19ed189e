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
import multiprocessing
import os
import re
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

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
    bundle_leaf_hashes,
    bundle_prefix,
    bundles_for_size,
    entries_path,
    full_tile_root,
    level_width,
    tile_hashes,
    tile_path,
    tiles_for_size,
)

if TYPE_CHECKING:  # only a caller that brings its own client needs httpx (100 ms to import)
    import httpx

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
    """The tlog-tiles prefix: `base_url` if it ends in /log or /log/, else base_url + /log/.
    A ``file://`` URL names the log's directory itself (a copy of a static-files log)."""
    url = base_url.rstrip("/")
    if not url.endswith("/log") and not url.startswith("file:"):
        url += "/log"
    return url + "/"


class _Fetcher(Protocol):
    """GETs a path under the log's prefix: (HTTP status, body). Thread-safe."""

    # True where a fetch costs less than handing it to a thread (files on a local disk).
    inline: bool

    def get(self, path: str, *, fresh: bool = False) -> tuple[int, bytes]: ...

    def get_many(self, paths: Sequence[str]) -> list[tuple[int, bytes]]:
        """`get` of each path, in order (over HTTP: pipelined on one connection)."""
        ...

    def close(self) -> None: ...


class _HttpxFetcher:
    """Through a caller's httpx client (its transport, proxies and certificates)."""

    inline = False

    def __init__(self, prefix: str, client: httpx.Client) -> None:
        import httpx  # here, not above: the caller that passed a client has imported it anyway

        self._prefix = prefix
        self._client = client
        self._errors = httpx.HTTPError

    def get(self, path: str, *, fresh: bool = False) -> tuple[int, bytes]:
        url = self._prefix + path
        headers = {"Cache-Control": "no-cache"} if fresh else None
        try:
            resp = self._client.get(url, headers=headers)
        except self._errors as exc:
            raise LedgerUnavailable(f"cannot fetch {url}: {type(exc).__name__}") from None
        return resp.status_code, resp.content

    def get_many(self, paths: Sequence[str]) -> list[tuple[int, bytes]]:
        return [self.get(path) for path in paths]

    def close(self) -> None:
        pass


class _Closed(Exception):
    """The server closed the connection before a response began."""


_MAX_BODY = 32 << 20  # a full bundle of 64 KiB entries is 16 MiB
_MAX_HEADERS = 100


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


class _PooledFetcher:
    """HTTP/1.1 GETs with keep-alive, one persistent connection per fetching thread.

    A minimal client (Content-Length, chunked, gzip; no redirects, no proxies), because a
    verifier makes thousands of small requests and a general-purpose client's per-request
    cost is several times the hashing it exists to feed (httpx: about 300 us a request here,
    this: about 30 us)."""

    inline = False

    def __init__(self, prefix: str, timeout: float) -> None:
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LedgerUnavailable(f"not an http(s) URL: {prefix}")
        self._prefix = prefix
        self._host = parts.hostname
        self._https = parts.scheme == "https"
        self._port = parts.port or (443 if self._https else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default = 443 if self._https else 80
        self._host_header = host if self._port == default else f"{host}:{self._port}"
        self._base = parts.path
        self._timeout = timeout
        self._context = ssl.create_default_context() if self._https else None
        self._local = threading.local()
        self._guard = threading.Lock()
        self._open: set[_Connection] = set()

    def _connect(self) -> _Connection:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_hostname=self._host)
        conn = _Connection(sock)
        with self._guard:
            self._open.add(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        self._local.conn = None
        with self._guard:
            self._open.discard(conn)
        conn.close()

    def _request(self, path: str, fresh: bool) -> bytes:
        return (
            f"GET {self._base}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            "Accept-Encoding: gzip, identity\r\nUser-Agent: bastion-verifier\r\n"
            + ("Cache-Control: no-cache\r\n" if fresh else "")
            + "\r\n"
        ).encode()

    def get(self, path: str, *, fresh: bool = False) -> tuple[int, bytes]:
        return self._exchange([path], fresh)[0]

    def get_many(self, paths: Sequence[str]) -> list[tuple[int, bytes]]:
        results = self._exchange(paths, False)
        # A server that closed after the first responses (HTTP/1.0): the rest one by one.
        return results + [self.get(path) for path in paths[len(results) :]]

    def _exchange(self, paths: Sequence[str], fresh: bool) -> list[tuple[int, bytes]]:
        """Send the requests at once on this thread's connection (HTTP/1.1 pipelining: one
        round trip for all), then read the responses in order, as many as the server sent
        before it closed the connection (at least one)."""
        request = b"".join(self._request(path, fresh) for path in paths)
        for attempt in (0, 1):
            conn: _Connection | None = getattr(self._local, "conn", None)
            reused = conn is not None
            results: list[tuple[int, bytes]] = []
            keep = True
            try:
                if conn is None:
                    conn = self._local.conn = self._connect()
                conn.sock.sendall(request)
                while keep and len(results) < len(paths):
                    try:
                        status, headers, keep = _read_head(conn.rfile)
                    except _Closed:
                        if results:  # it answered some and closed: the caller asks again
                            keep = False
                            break
                        raise
                    body = _read_body(conn.rfile, headers, status)
                    if headers.get("content-encoding", "").lower() == "gzip":
                        body = _gunzip(body, self._prefix + paths[len(results)])
                    results.append((status, body))
            except (_Closed, OSError, ValueError) as exc:
                if conn is not None:
                    self._drop(conn)
                # A kept-alive connection the server closed meanwhile: once more, afresh.
                if attempt == 0 and reused and isinstance(exc, _Closed | ConnectionError):
                    continue
                raise LedgerUnavailable(
                    f"cannot fetch {self._prefix + paths[len(results)]}: {type(exc).__name__}"
                ) from None
            if not keep:
                self._drop(conn)
            return results
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._guard:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


def _read_head(rfile: BinaryIO) -> tuple[int, dict[str, str], bool]:
    """(status, lower-cased headers, whether the connection stays open) of a response."""
    line = rfile.readline(65537)
    if not line:
        raise _Closed()
    version, _, rest = line.decode("latin-1").partition(" ")
    status = int(rest[:3])
    if not version.startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x response")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = rfile.readline(65537)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ValueError("response ends inside its headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ValueError("too many response headers")
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return status, headers, keep


def _read_body(rfile: BinaryIO, headers: dict[str, str], status: int) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(rfile.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise ValueError("response body too large")
            parts.append(_read_exactly(rfile, size))
            rfile.readline(3)
    length = headers.get("content-length")
    if length is None:
        headers["connection"] = "close"
        body = rfile.read(_MAX_BODY + 1)
        if len(body) > _MAX_BODY:
            raise ValueError("response body too large")
        return body
    n = int(length)
    if not 0 <= n <= _MAX_BODY:
        raise ValueError("response body too large")
    return _read_exactly(rfile, n)


def _read_exactly(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) != n:
        raise ValueError("response body truncated")
    return data


def _gunzip(body: bytes, url: str) -> bytes:
    decompressor = zlib.decompressobj(wbits=31)
    try:
        data = decompressor.decompress(body, _MAX_BODY)
    except zlib.error:
        raise VerificationError(f"{url}: corrupt gzip body") from None
    if decompressor.unconsumed_tail:
        raise VerificationError(f"{url}: gzip body too large")
    return data


class _FileFetcher:
    """A log's files read straight from a directory (a mirror of a static-files log)."""

    inline = True

    def __init__(self, prefix: str) -> None:
        self._root = Path(unquote(urlsplit(prefix).path))

    def get(self, path: str, *, fresh: bool = False) -> tuple[int, bytes]:
        try:
            return 200, (self._root / path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return 404, b""
        except OSError as exc:
            raise LedgerUnavailable(f"cannot read {self._root / path}: {exc.strerror}") from None

    def get_many(self, paths: Sequence[str]) -> list[tuple[int, bytes]]:
        return [self.get(path) for path in paths]

    def close(self) -> None:
        pass


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
        processes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`workers`: fetching threads (each with one keep-alive connection). `processes`:
        worker processes that fetch and hash the entry bundles of a large log in parallel
        (default: one per CPU, at most 4; 1 = all in this process). A caller's own `http`
        client stays in this process."""
        self.prefix = log_prefix(base_url)
        self.log_verifier = NoteVerifier.from_vkey(vkey)
        self.witnesses = [CosignatureVerifier.from_vkey(w) for w in witness_vkeys]
        self.quorum = quorum
        self.state_dir = Path(state_dir)
        self.workers = max(1, workers)
        cpus = min(os.cpu_count() or 1, 4)
        self.processes = 1 if http is not None else max(1, cpus if processes is None else processes)
        self.clock: Clock = clock or SystemClock()
        self._http = http
        self._fetcher = self._new_fetcher()
        self._bytes = 0
        self._bytes_lock = threading.Lock()

    def _new_fetcher(self) -> _Fetcher:
        if self._http is not None:
            return _HttpxFetcher(self.prefix, self._http)
        if self.prefix.startswith("file:"):
            return _FileFetcher(self.prefix)
        return _PooledFetcher(self.prefix, timeout=30.0)

    def close(self) -> None:
        self._fetcher.close()

    def __enter__(self) -> LogVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP ------------------------------------------------------------------------------

    def _get(self, path: str, *, allow_missing: bool = False, fresh: bool = False) -> bytes | None:
        status, body = self._fetcher.get(path, fresh=fresh)
        return self._accept(path, status, body, allow_missing)

    def _accept(self, path: str, status: int, body: bytes, allow_missing: bool) -> bytes | None:
        if status == 404 and allow_missing:
            return None
        if status != 200:
            raise LedgerUnavailable(f"cannot fetch {self.prefix + path}: HTTP {status}")
        with self._bytes_lock:
            self._bytes += len(body)
        return body

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
            try:
                return bundle_prefix(full, width)
            except TileError as exc:
                raise VerificationError(f"entry bundle {entries_path(index)}: {exc}") from None
        return data

    def _level0_chunk(self, chunk: Sequence[tuple[int, int, bool]]) -> _Level0:
        """Check a run of entry bundles (index, width, keep) against their level-0 tiles:
        both asked for at once (pipelined), each bundle's leaf hashes compared with its tile
        whole. Returns (index, root of the tile if full, its hashes if `keep`) for each, and
        the bytes fetched. Runs on a fetching thread, or in a worker process."""
        paths = []
        for index, width, _ in chunk:
            paths += [entries_path(index, width), tile_path(0, index, width)]
        answers = self._fetcher.get_many(paths)
        checked: list[tuple[int, bytes | None, bytes | None]] = []
        nbytes = 0
        for k, (index, width, keep) in enumerate(chunk):
            partial = width < TILE_WIDTH
            (bundle_status, bundle), (tile_status, tile) = answers[2 * k], answers[2 * k + 1]
            got = self._accept(paths[2 * k], bundle_status, bundle, partial)
            bundle = self._get_bundle(index, width) if got is None else got
            got = self._accept(paths[2 * k + 1], tile_status, tile, partial)
            tile = self._get_tile(0, index, width) if got is None else got
            nbytes += len(bundle) + len(tile)
            leaves = _check_level0(index, width, bundle, tile)
            root = full_tile_root(leaves) if width == TILE_WIDTH else None
            checked.append((index, root, leaves if keep else None))
        return checked, nbytes

    def fetch_checkpoint(self) -> str:
        data = self._get("checkpoint", fresh=True)  # mutable: never from a stale cache
        assert data is not None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("checkpoint is not valid UTF-8") from None

    def _fetch_ordered(
        self,
        pool: ThreadPoolExecutor,
        jobs: Sequence[Callable[[], T]],
        progress: Callable[[], None],
    ) -> Iterator[T]:
        """Run fetches on `pool`, a bounded window ahead, yielding results in order, so that
        fetching overlaps the checking of what came before."""
        if self._fetcher.inline:
            for job in jobs:
                result = job()
                progress()
                yield result
            return
        window: deque[Future[T]] = deque()
        it = iter(jobs)
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
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tlog-fetch")
        try:
            reader, entries, tiles_n, bundles_n = self._check_tiles(
                pool, size, since, old_size, progress
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

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

    def _level0(
        self,
        pool: ThreadPoolExecutor,
        bundles: Sequence[tuple[int, int, bool]],
        tick: Callable[[], None],
    ) -> Iterator[_Level0]:
        """`_level0_chunk` over all the bundles, in order: in worker processes for a large
        log (each fetches and hashes its own runs of bundles: hashing is what a verifier
        spends its time on, and it holds the GIL), else on the fetching threads."""

        def ticks(n: int) -> Callable[[], None]:
            def done() -> None:
                for _ in range(2 * n):  # a bundle and its tile
                    tick()

            return done

        if self.processes > 1 and len(bundles) >= 4 * _PROCESS_CHUNK:
            chunks = [
                bundles[i : i + _PROCESS_CHUNK] for i in range(0, len(bundles), _PROCESS_CHUNK)
            ]
            global _WORKER
            _WORKER = self  # what the forked workers inherit (they open their own connections)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_start_worker
            ) as processes:
                for chunk, result in zip(chunks, processes.map(_run_level0, chunks), strict=True):
                    ticks(len(chunk))()
                    yield result
            return
        jobs = [_bind_chunk(self._level0_chunk, [b]) for b in bundles]
        yield from self._fetch_ordered(pool, jobs, ticks(1))

    def _check_tiles(
        self,
        pool: ThreadPoolExecutor,
        size: int,
        since: int,
        old_size: int,
        progress: Progress | None,
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

        # Level 0: each entry bundle's leaf hashes against its tile, compared whole; the roots
        # of the full tiles checked in this run are what the level above must hold.
        level0 = [(r.index, r.width, (0, r.index) in keep_level0) for r in refs if r.level == 0]
        roots: dict[int, bytes] = {}
        for checked, nbytes in self._level0(pool, level0, tick):
            with self._bytes_lock:
                self._bytes += nbytes
            for index, root, leaves in checked:
                if root is not None:
                    roots[index] = root
                if leaves is not None:
                    reader.add_tile(0, index, tile_hashes(leaves))
        entries_checked = sum(width for _, width, _ in level0)

        # Levels >= 1: each hash is the root of a full tile below, checked in this run, or an
        # old one (incremental mode) pinned by the stored root.
        for level in range(1, max((r.level for r in refs), default=0) + 1):
            level_refs = [r for r in refs if r.level == level]
            tile_jobs = [_bind(self._get_tile, level, r.index, r.width) for r in level_refs]
            old_full_children = level_width(since, level - 1) >> TILE_HEIGHT
            next_roots: dict[int, bytes] = {}
            for ref, data in zip(
                level_refs, self._fetch_ordered(pool, tile_jobs, tick), strict=True
            ):
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
                    next_roots[ref.index] = full_tile_root(data)
                reader.add_tile(level, ref.index, hashes)
            roots = next_roots
        return reader, entries_checked, len(refs), len(bundles)


T = TypeVar("T")

_Level0 = tuple[list[tuple[int, bytes | None, bytes | None]], int]
"""(index, root if full, tile hashes if kept) per bundle, and the bytes fetched."""

_PROCESS_CHUNK = 32  # bundles a worker process fetches (pipelined) and hashes per task
_WORKER: LogVerifier | None = None  # in a worker process: its (forked) copy of the verifier


def _start_worker() -> None:
    """In a new worker process: connections of its own (never the parent's sockets)."""
    assert _WORKER is not None
    _WORKER._fetcher = _WORKER._new_fetcher()


def _run_level0(chunk: Sequence[tuple[int, int, bool]]) -> _Level0:
    assert _WORKER is not None
    return _WORKER._level0_chunk(chunk)


def _bind_chunk(
    fn: Callable[[Sequence[tuple[int, int, bool]]], _Level0], chunk: list[tuple[int, int, bool]]
) -> Callable[[], _Level0]:
    return lambda: fn(chunk)


def _check_level0(index: int, width: int, bundle: bytes, tile: bytes) -> bytes:
    """The bundle's leaf hashes, if they are exactly its level-0 tile; else VerificationError
    naming the first entry that differs."""
    where = entries_path(index, width)
    if len(tile) != width * merkle.HASH_SIZE:
        raise VerificationError(
            f"tile {tile_path(0, index, width)}: {len(tile)} bytes, expected {width} hashes"
        )
    try:
        leaves = bundle_leaf_hashes(bundle, width)
    except TileError as exc:
        raise VerificationError(f"entry bundle {where}: {exc}") from None
    if leaves != tile:
        bad = _first_difference(leaves, tile) // merkle.HASH_SIZE
        raise VerificationError(
            f"entry {index * TILE_WIDTH + bad} ({where}) does not hash to its level-0 tile"
            f" ({tile_path(0, index, width)})"
        )
    return leaves


def _bind(fn: Callable[..., bytes], *args: int) -> Callable[[], bytes]:
    return lambda: fn(*args)


def _tile(data: bytes, ref: TileRef) -> list[bytes]:
    try:
        return tile_hashes(data, ref.width)
    except TileError as exc:
        raise VerificationError(f"tile {ref.path}: {exc}") from None


def _first_difference(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


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
