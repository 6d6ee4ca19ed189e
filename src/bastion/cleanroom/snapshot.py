"""The clean room's input: a snapshot Bastion builds from the vault, never a file someone placed.

``SnapshotBuilder.refresh()`` brings ``<data_dir>/snapshot.json`` (the manifest) and the
Parquet file it names up to date with the vault's change feed:

1. read the manifest (its ``cursor`` is the last change-feed ``seq`` the snapshot holds) and
   note the time (``as_of``) *before* reading where the feed ends (``through``): every
   commit before ``as_of`` is then in the snapshot;
2. nothing new: only ``as_of`` moves (the snapshot is still current);
3. else append a ``cleanroom.snapshot`` event (dataset, fields, ``(cursor, through]``,
   the most records that range can open) and, with its receipt, let the vault open those
   records' fields (``vault.snapshot``);
4. write the new file beside the old: the old rows minus every record the range touched
   (deleted, erased, or rewritten), plus the rows just opened; fsync it, rename it into
   place, fsync the directory, then do the same for the manifest. A crash at any moment
   leaves the old manifest naming the old, whole file.

A record of a shredded subject is touched by the shred's ``erase`` change, so the next
refresh drops it; the engine refuses a snapshot whose ``as_of`` is older than
``[cleanroom] max_snapshot_age_seconds`` (``snapshot_engine.py``), which bounds how long
it can keep counting. One builder runs at a time per directory (``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bastion.catalog import Catalog, DatasetSpec, FieldType
from bastion.cleanroom.config import CleanRoomConfig
from bastion.clock import Clock, iso
from bastion.durable import fsync_dir
from bastion.errors import ConfigError, IntegrityError
from bastion.events import SYSTEM, CleanroomSnapshot, encode_event
from bastion.ledger.api import LedgerWriter
from bastion.vault import Vault
from bastion.vault.changes import MAX_PAGE, last_seq, read_changes
from bastion.vault.snapshot import SnapshotBatch, SnapshotGrant, count_writes, open_snapshot

MANIFEST = "snapshot.json"
FORMAT = 1
RECORD_KEY = "_record_key"  # the vault's record key: what a later delete or erase names
_LOCK = ".snapshot.lock"
_KEEP = 2  # files kept: the current one and the one before (a query may still read it)


class SnapshotUnavailable(ConfigError):
    """No snapshot, a stale one, or one that fails its check: the clean room does not answer
    (HTTP 503, exit code 10)."""

    exit_code = 10


@dataclass(frozen=True)
class Manifest:
    """What ``snapshot.json`` says: which file, what it holds, and how current it is."""

    format: int
    snapshot_id: str
    dataset: str
    fields: list[str]
    file: str
    sha256: str
    bytes: int
    records: int
    cursor: int  # the last change-feed seq the snapshot holds
    as_of: str  # every vault commit before this time is in the snapshot
    built_at: str
    ledger_index: int  # the cleanroom.snapshot entry of the last build that opened values

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RefreshResult:
    manifest: Manifest
    mode: str  # "full", "incremental" or "current" (nothing changed)
    opened: int
    removed: int
    changes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "opened": self.opened,
            "removed": self.removed,
            "changes": self.changes,
            **self.manifest.to_json(),
        }


def snapshot_fields(catalog: Catalog, config: CleanRoomConfig) -> list[str]:
    """The fields a clean-room query can use, and no others: the subject key (as its token),
    the public dimensions, the private keys and the declared measures."""
    spec = catalog.dataset(config.dataset)
    names = {
        spec.subject_key,
        *spec.public_dimensions,
        *spec.private_keys,
        *config.measures.get(spec.name, {}),
    }
    return sorted(names)


def read_manifest(data_dir: Path) -> Manifest | None:
    """The manifest, or None when there is none (or it is not one this version wrote)."""
    try:
        raw = json.loads((data_dir / MANIFEST).read_bytes())
        manifest = Manifest(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        raise SnapshotUnavailable(
            f"the clean-room snapshot manifest in {data_dir} is unreadable; run "
            "`bastion cleanroom snapshot` to rebuild it"
        ) from None
    if manifest.format != FORMAT or Path(manifest.file).name != manifest.file:
        raise SnapshotUnavailable(f"the clean-room snapshot manifest in {data_dir} is not valid")
    return manifest


def verify_file(data_dir: Path, manifest: Manifest) -> Path:
    """The manifest's file, once its size and SHA-256 match; else ``SnapshotUnavailable``."""
    path = data_dir / manifest.file
    try:
        if path.stat().st_size != manifest.bytes or _sha256(path) != manifest.sha256:
            raise SnapshotUnavailable("the clean-room snapshot file does not match its manifest")
    except OSError:
        raise SnapshotUnavailable("the clean-room snapshot file is missing") from None
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _publish(tmp: Path, final: Path) -> None:
    """Make ``tmp`` durable, rename it to ``final`` and make the rename durable."""
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _write_manifest(data_dir: Path, manifest: Manifest) -> None:
    tmp = data_dir / f".tmp-{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
    _publish(tmp, data_dir / MANIFEST)


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One builder per directory across processes (the kernel drops the lock if one dies)."""
    with (data_dir / _LOCK).open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _arrow_type(kind: FieldType) -> Any:
    import pyarrow as pa

    return {
        FieldType.STRING: pa.string(),
        FieldType.INT: pa.int64(),
        FieldType.FLOAT: pa.float64(),
        FieldType.BOOL: pa.bool_(),
        FieldType.DATE: pa.date32(),
        FieldType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    }.get(kind, pa.string())


class SnapshotBuilder:
    """Builds and refreshes one dataset's snapshot in ``data_dir`` from ``vault``."""

    def __init__(
        self,
        vault: Vault,
        ledger: LedgerWriter,
        clock: Clock,
        data_dir: Path,
        *,
        config: CleanRoomConfig | None = None,
    ) -> None:
        self.vault = vault
        self.ledger = ledger
        self.clock = clock
        self.data_dir = data_dir
        self.config = config or CleanRoomConfig()
        self.spec: DatasetSpec = vault.catalog.dataset(self.config.dataset)
        self.fields = snapshot_fields(vault.catalog, self.config)

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [(RECORD_KEY, pa.string())]
            + [(n, _arrow_type(self.spec.field(n).type)) for n in self.fields]
        )

    def refresh(
        self, *, full: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> RefreshResult:
        """Bring the snapshot up to date (``full``: rebuild it from the whole feed).
        ``progress(done, total)`` is called as records are opened."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.data_dir):
            try:
                old = None if full else read_manifest(self.data_dir)
            except SnapshotUnavailable:
                old = None  # an unreadable manifest: rebuild
            if old is not None and (old.dataset != self.spec.name or old.fields != self.fields):
                old = None  # built for other fields: rebuild
            as_of = iso(self.clock.now())
            through = last_seq(self.vault.db)
            if old is not None and through < old.cursor:
                old = None  # the feed went back (a restored database): rebuild
            if old is not None and through == old.cursor:
                current = Manifest(**{**old.to_json(), "as_of": as_of})
                _write_manifest(self.data_dir, current)
                return RefreshResult(current, "current", 0, 0, 0)
            return self._build(old, as_of, through, progress)

    def _touched(self, after: int, through: int) -> tuple[set[str], int]:
        """Record keys the feed changed in ``(after, through]``, and how many changes."""
        keys: set[str] = set()
        n, cursor = 0, after
        while cursor < through:
            page = read_changes(self.vault.db, self.spec.name, cursor, MAX_PAGE)
            page = [c for c in page if c.seq <= through]
            if not page:
                break
            keys.update(c.record_key for c in page)
            n += len(page)
            cursor = page[-1].seq
        return keys, n

    def _build(
        self,
        old: Manifest | None,
        as_of: str,
        through: int,
        progress: Callable[[int, int], None] | None,
    ) -> RefreshResult:
        after = old.cursor if old is not None else 0
        removed, changes = self._touched(after, through) if old is not None else (set(), 0)
        total = count_writes(self.vault, self.spec.name, after, through)
        event = CleanroomSnapshot(
            actor=SYSTEM,
            reason="clean-room snapshot from the vault's change feed",
            at=as_of,
            snapshot_id=uuid.uuid4().hex,
            dataset=self.spec.name,
            fields=self.fields,
            mode="incremental" if old is not None else "full",
            after_seq=after,
            through_seq=through,
            records=total,
            removed=len(removed),
        )
        # Recorded before anything is opened: the entry is what lets the vault open it.
        receipt = self.ledger.append(event)
        grant = SnapshotGrant.bind(
            receipt, encode_event(event), dataset=self.spec.name, fields=self.fields
        )
        final = self.data_dir / f"{self.spec.name}-{event.snapshot_id}.parquet"
        tmp = self.data_dir / f".tmp-{event.snapshot_id}.parquet"
        delta = self.data_dir / f".tmp-{event.snapshot_id}-delta.parquet"
        try:
            opened = self._write_rows(open_snapshot(self.vault, grant), delta, total, progress)
            if old is None:
                os.replace(delta, tmp)
                records = opened
            else:
                records = self._merge(self.data_dir / old.file, delta, removed, tmp)
            _publish(tmp, final)
        finally:
            for leftover in (tmp, delta):
                leftover.unlink(missing_ok=True)
        manifest = Manifest(
            format=FORMAT,
            snapshot_id=event.snapshot_id,
            dataset=self.spec.name,
            fields=self.fields,
            file=final.name,
            sha256=_sha256(final),
            bytes=final.stat().st_size,
            records=records,
            cursor=through,
            as_of=as_of,
            built_at=iso(self.clock.now()),
            ledger_index=receipt.index,
        )
        _write_manifest(self.data_dir, manifest)
        self._prune(final.name, old.file if old is not None else None)
        return RefreshResult(manifest, event.mode, opened, len(removed), changes)

    def _write_rows(
        self,
        batches: Iterator[SnapshotBatch],
        path: Path,
        total: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.schema()
        n = 0
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for batch in batches:
                arrays = [pa.array(batch.record_keys, pa.string())]
                for name in self.fields:
                    kind = schema.field(name).type
                    values: Sequence[object] = batch.columns[name]
                    if pa.types.is_date32(kind) or pa.types.is_timestamp(kind):
                        # Clear dates and timestamps are ISO text in the vault's JSON.
                        arrays.append(pa.array(values).cast(kind))
                    else:
                        arrays.append(pa.array(values, kind))
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                n += len(batch)
                if progress:
                    progress(n, total)
        return n

    def _merge(self, previous: Path, delta: Path, removed: set[str], out: Path) -> int:
        """``previous`` without the ``removed`` keys, plus ``delta``, into ``out``."""
        import duckdb
        import pyarrow as pa

        verify_file(self.data_dir, self._manifest_for(previous))
        con = duckdb.connect()
        try:
            gone = pa.table({"k": pa.array(sorted(removed), pa.string())})
            con.register("gone", gone)
            prev, new, dest = (str(p).replace("'", "''") for p in (previous, delta, out))
            con.execute(
                f"COPY (SELECT * FROM read_parquet('{prev}') WHERE {RECORD_KEY} NOT IN "
                f"(SELECT k FROM gone) UNION ALL SELECT * FROM read_parquet('{new}')) "
                f"TO '{dest}' (FORMAT parquet, COMPRESSION zstd)"
            )
            row = con.execute(f"SELECT COUNT(*) FROM read_parquet('{dest}')").fetchone()
        finally:
            con.close()
        return int(row[0]) if row else 0

    def _manifest_for(self, previous: Path) -> Manifest:
        manifest = read_manifest(self.data_dir)
        if manifest is None or manifest.file != previous.name:
            raise IntegrityError("the clean-room snapshot changed while it was refreshed")
        return manifest

    def _prune(self, current: str, previous: str | None) -> None:
        keep = {current, previous}
        files = sorted(
            self.data_dir.glob(f"{self.spec.name}-*.parquet"), key=lambda p: p.stat().st_mtime
        )
        for path in files[:-_KEEP]:
            if path.name not in keep:
                path.unlink(missing_ok=True)
        for path in self.data_dir.glob(".tmp-*"):
            path.unlink(missing_ok=True)  # a crashed build's leftovers (we hold the lock)


def age_seconds(manifest: Manifest, now: datetime) -> float:
    """How old the snapshot's view of the vault is."""
    return (now - datetime.fromisoformat(manifest.as_of.replace("Z", "+00:00"))).total_seconds()
