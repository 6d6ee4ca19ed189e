"""The clean room's way in: one dataset's fields, for one recorded stretch of the change feed.

A clean-room snapshot holds millions of records, far more than an ``access.decision`` can
list value by value in one 64 KiB ledger entry, so it does not go through ``Vault.open``.
It has a capability of its own, as narrow:

* The clean room first appends a ``cleanroom.snapshot`` event naming the dataset, the fields,
  a change-feed range ``(after_seq, through_seq]`` and how many records that range may
  yield. :meth:`SnapshotGrant.bind` turns that entry and its receipt into a grant, after
  re-hashing the entry against the receipt's leaf hash and checking that it records exactly
  the dataset and fields asked for.
* :func:`open_snapshot` opens, for a grant, only what the entry names: the listed fields of
  the listed dataset, of the records that an ``insert`` or ``update`` inside the range left
  as they are now (a record written again after the range is left for the next range; one
  deleted, or whose subject was shredded, opens nothing). The vault finds those records in
  its own change feed: the caller names no record, so it cannot add one.
* A protected field is never opened this way (only interoperable and public ones, which may
  travel pseudonymized), a range may not reach past the feed's end, more records than the
  entry counts stop the read, and each entry opens once: its leaf hash is stored, in the
  database, the first time it is used.

The same caveat as ``RecordedPlan``: code in this process could fabricate an entry and a
receipt; the guarantee against that is the log, in which every snapshot's entry must appear.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from bastion.catalog import Classification, FieldSpec, Value
from bastion.clock import iso
from bastion.errors import InputError, IntegrityError
from bastion.events import CleanroomSnapshot, EgressExtract, decode_event
from bastion.ledger.api import Receipt
from bastion.store import Cursor
from bastion.vault.changes import last_seq
from bastion.vault.plan import FieldRef, leaf_hash
from bastion.vault.schema import select_in
from bastion.vault.sealing import DatasetLayout
from bastion.vault.subject_keys import FieldKey, SubjectKeys

if TYPE_CHECKING:
    from bastion.vault.vault import Vault

SNAPSHOT_SCHEMA = [
    # The ledger entries (by leaf hash) that already opened a snapshot: each opens once.
    """CREATE TABLE IF NOT EXISTS vault_snapshot_grants (
        leaf_hash TEXT PRIMARY KEY,
        ledger_index {int} NOT NULL,
        dataset TEXT NOT NULL,
        at TEXT NOT NULL)""",
]
DEFAULT_PAGE = 50_000
MAX_PAGE = 100_000

_GRANTED = object()


class SnapshotGrant:
    """A ``cleanroom.snapshot`` entry, checked against its receipt. Made only by :meth:`bind`;
    immutable, and it cannot be copied into a changed one."""

    __slots__ = ("event", "receipt")
    event: CleanroomSnapshot | EgressExtract
    receipt: Receipt

    def __init__(
        self,
        event: CleanroomSnapshot | EgressExtract,
        receipt: Receipt,
        *,
        _granted: object = None,
    ) -> None:
        if _granted is not _GRANTED:
            raise TypeError(
                "a SnapshotGrant is made only by SnapshotGrant.bind, which checks its ledger entry"
            )
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "receipt", receipt)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a SnapshotGrant is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a SnapshotGrant is immutable")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a SnapshotGrant cannot be pickled or copied; record a new snapshot")

    def __copy__(self) -> SnapshotGrant:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> SnapshotGrant:
        return self

    def __repr__(self) -> str:
        e = self.event
        return (
            f"SnapshotGrant({e.dataset!r}, {len(e.fields)} fields, changes "
            f"({e.after_seq}, {e.through_seq}], entry {self.receipt.index})"
        )

    @classmethod
    def bind(
        cls, receipt: Receipt, entry: bytes, *, dataset: str, fields: Sequence[str]
    ) -> SnapshotGrant:
        """The grant of one recorded ``cleanroom.snapshot`` entry, for exactly ``dataset`` and
        ``fields`` (the entry must name the same ones, no more and no fewer)."""
        if not isinstance(receipt, Receipt):
            raise TypeError("SnapshotGrant needs a ledger Receipt")
        if (
            not isinstance(receipt.index, int)
            or receipt.index < 0
            or not isinstance(receipt.leaf_hash, bytes)
            or len(receipt.leaf_hash) != 32
        ):
            raise InputError("a snapshot grant needs a real ledger index and leaf hash")
        if not isinstance(entry, bytes) or leaf_hash(entry) != receipt.leaf_hash:
            raise IntegrityError("the ledger entry does not match the receipt's leaf hash")
        try:
            event = decode_event(entry)
        except ValueError:
            raise IntegrityError("the recorded ledger entry is not a Bastion event") from None
        if not isinstance(event, CleanroomSnapshot | EgressExtract):
            raise InputError("the recorded entry is not a cleanroom.snapshot or egress.extract")
        if event.dataset != dataset:
            raise InputError("the snapshot's ledger entry records another dataset", dataset=dataset)
        asked, recorded = set(fields), set(event.fields)
        if len(asked) != len(fields) or len(recorded) != len(event.fields):
            raise InputError("a snapshot names each field once", dataset=dataset)
        for name in sorted(asked ^ recorded):
            raise InputError(
                "the snapshot's ledger entry does not record exactly these fields",
                dataset=dataset,
                field=name,
            )
        if event.through_seq < event.after_seq:
            raise InputError("a snapshot's change-feed range runs backwards", dataset=dataset)
        return cls(event, receipt, _granted=_GRANTED)


@dataclass(frozen=True)
class SnapshotBatch:
    """Opened rows of one page: record keys and, per granted field, its values in order
    (sealed fields typed, clear ones as their JSON holds them), and each record's subject
    as its vault token (what a bulk count of 28 CFR 202.205 counts)."""

    record_keys: list[str]
    columns: dict[str, list[Value]]
    subjects: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.record_keys)


def count_writes(vault: Vault, dataset: str, after: int, through: int) -> int:
    """How many inserts and updates of ``dataset`` the feed holds in ``(after, through]``: the
    most records a snapshot of that range can open (what its entry records beforehand)."""
    vault.catalog.dataset(dataset)
    row = vault.db.query(
        "SELECT COUNT(*) FROM vault_changes WHERE dataset = ? AND seq > ? AND seq <= ? "
        "AND op IN ('insert', 'update')",
        (dataset, after, through),
    )
    return int(row[0][0]) if row else 0


def removed_since(vault: Vault, dataset: str, after: int, through: int) -> list[str]:
    """Record keys of ``dataset`` that a ``delete`` or an ``erase`` (a shred) removed in
    ``(after, through]`` and that existed at ``after``: what a reader who copied the
    dataset up to ``after`` must now delete (an egress flow's tombstones). Keys only."""
    vault.catalog.dataset(dataset)
    rows = vault.db.query(
        "SELECT DISTINCT c.record_key FROM vault_changes c WHERE c.dataset = ? AND c.seq > ? "
        "AND c.seq <= ? AND c.op IN ('delete', 'erase') AND EXISTS (SELECT 1 FROM "
        "vault_changes p WHERE p.dataset = c.dataset AND p.record_key = c.record_key "
        "AND p.seq <= ? AND p.op IN ('insert', 'update')) ORDER BY c.record_key",
        (dataset, after, through, after),
    )
    return [str(key) for (key,) in rows]


def distinct_subjects(vault: Vault, dataset: str) -> int:
    """How many subjects hold records of ``dataset`` now (an upper bound of how many one
    flow of it can reach)."""
    vault.catalog.dataset(dataset)
    rows = vault.db.query(
        "SELECT COUNT(DISTINCT subject) FROM vault_records WHERE dataset = ?", (dataset,)
    )
    return int(rows[0][0]) if rows else 0


def open_snapshot(
    vault: Vault, grant: SnapshotGrant, *, page: int = DEFAULT_PAGE
) -> Iterator[SnapshotBatch]:
    """Open what ``grant``'s entry names, a page at a time (see the module docstring).

    Everything is checked, and the entry marked used, before the first value is opened; a
    page is read in one short transaction, so no statement runs long on a large dataset.
    """
    if not isinstance(grant, SnapshotGrant):
        raise TypeError("open_snapshot takes a SnapshotGrant (a recorded cleanroom.snapshot)")
    if not 0 < page <= MAX_PAGE:
        raise ValueError(f"page must be between 1 and {MAX_PAGE}")
    event = grant.event
    spec = vault.catalog.dataset(event.dataset)
    for name in event.fields:
        f = spec.field(name)  # an unknown field fails before anything is read
        if f.classification is Classification.PROTECTED:
            raise InputError(
                "a snapshot never opens a protected field", dataset=spec.name, field=name
            )
    if event.through_seq > last_seq(vault.db):
        raise InputError("the snapshot's range reaches past the change feed", dataset=spec.name)
    vault.db.migrate("vault_snapshots", SNAPSHOT_SCHEMA)
    with vault.db.transaction() as cur:
        claimed = cur.execute(
            "INSERT INTO vault_snapshot_grants (leaf_hash, ledger_index, dataset, at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (leaf_hash) DO NOTHING",
            (grant.receipt.leaf_hash.hex(), grant.receipt.index, spec.name, iso(vault.clock.now())),
        ).rowcount
    if claimed != 1:
        raise InputError(
            "this snapshot's ledger entry was already used; record a new one", dataset=spec.name
        )
    return _pages(vault, grant, page)


def _pages(vault: Vault, grant: SnapshotGrant, page: int) -> Iterator[SnapshotBatch]:
    event = grant.event
    spec = vault.catalog.dataset(event.dataset)
    layout = DatasetLayout.of(spec)
    # A pseudonymized field is sealed too (the raw id, for a release in clear), but a
    # snapshot takes its token from the clear column: it never opens a raw identifier.
    sealed = [
        f.name
        for f in layout.sealed
        if f.name in event.fields and not spec.field(f.name).pseudonymize
    ]
    clear = [spec.field(name) for name in event.fields if name not in sealed]
    db = vault.db
    # A record deleted and written again inside the range may match two of its changes (same
    # key, same version); only such keys are remembered, to give each record once.
    deleted = {
        str(key)
        for (key,) in db.query(
            "SELECT DISTINCT record_key FROM vault_changes WHERE dataset = ? AND seq > ? "
            "AND seq <= ? AND op = 'delete'",
            (spec.name, event.after_seq, event.through_seq),
        )
    }
    seen: set[str] = set()
    cursor, opened = event.after_seq, 0
    subject_keys = _PageKeys(vault._keys)
    while True:
        # One page opened with the cyclic collector paused (see ``_gc_paused``), and given
        # out with it running again.
        with _gc_paused():
            with db.transaction() as cur:
                rows = cur.execute(
                    "SELECT c.seq, r.record_key, r.subject, r.clear, r.sealed FROM vault_changes c "
                    "JOIN vault_records r ON r.dataset = c.dataset AND r.record_key = c.record_key "
                    "AND r.version = c.version "
                    "WHERE c.dataset = ? AND c.seq > ? AND c.seq <= ? "
                    "AND c.op IN ('insert', 'update') ORDER BY c.seq LIMIT ?",
                    (spec.name, cursor, event.through_seq, page),
                ).fetchall()
                if not rows:
                    return
                cursor = int(rows[-1][0])
                keys = subject_keys.load(cur, list({str(r[2]) for r in rows}))
            live: dict[str, tuple[str, str | None, bytes]] = {}
            clears: list[str] = []
            for _, key, subject, clear_text, blob in rows:
                key = str(key)
                if str(subject) not in keys:
                    continue  # shredded: its values cannot be opened, and must not count
                if key in deleted:
                    if key in seen:
                        continue
                    seen.add(key)
                if key in live:
                    continue
                live[key] = (str(subject), None, bytes(blob))
                clears.append(str(clear_text))
            opened += len(live)
            if opened > event.records:
                raise IntegrityError(
                    "the change feed yields more records than the snapshot's entry recorded"
                )
            if not live:
                continue
            batch = _open_page(layout, sealed, clear, live, clears, keys, event.fields)
        yield batch


def _open_page(
    layout: DatasetLayout,
    sealed: list[str],
    clear: list[FieldSpec],
    live: dict[str, tuple[str, str | None, bytes]],
    clears: list[str],
    keys: dict[str, FieldKey],
    fields: Sequence[str],
) -> SnapshotBatch:
    """One page's records opened: the sealed fields by the layout, the clear ones parsed."""
    # The items to open, made once per field by C-level map/zip (a FieldRef per value is
    # the page's largest allocation), and the same objects then look the values up.
    records = list(live)
    refs = {
        name: list(map(_new_ref, repeat(FieldRef), zip(records, repeat(name)))) for name in sealed
    }
    values: dict[FieldRef, Value] = {}
    if sealed:
        by_record = map(list, zip(*refs.values(), strict=True))
        grouped = dict(zip(records, by_record, strict=True))
        values = layout.open_items(grouped, live, keys)
    columns: dict[str, list[Value]] = {}
    for name in sealed:
        columns[name] = list(map(values.__getitem__, refs[name]))
    parsed = list(map(orjson.loads, clears))
    for f in clear:
        # Public values and pseudonym tokens as the clear column stores them (JSON: a
        # date is its ISO text); the caller types them by the catalog.
        columns[f.name] = [row.get(f.name) for row in parsed]
    return SnapshotBatch(
        records,
        {name: columns[name] for name in fields},
        [subject for subject, _, _ in live.values()],
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while one page is read and opened, back on (if it
    was on) before the page is given out.

    A page allocates a few hundred thousand small containers (rows, FieldRefs, lists, the
    clear JSON's dicts) that all live until the page is done and form no cycle, and every
    such burst set off collections that walk all the tracked objects of the process: about
    a third of a page's time in ``bench/bench_egress.py``. Reference counting still frees
    everything meanwhile; only cycles wait, and at most one page's worth."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_new_ref = tuple.__new__  # FieldRef is a NamedTuple: tuple.__new__(FieldRef, (record, field))


class _PageKeys:
    """Subject keys for the pages of one snapshot, derived once per subject, not per page.

    Every page still reads which of its subjects have a data key now and their erasure
    secrets, as ``SubjectKeys.load`` does, so a subject shredded between two pages opens
    nothing on the later one and a missing secret still fails (``load`` raises for it).
    What is kept is only the unwrapped, derived field key: a function of the subject's row
    (data-key version, wrapping-key version, wrapped key) and its secret, reused while both
    are unchanged. With twenty records per subject spread over the feed, a page of 50,000
    records meets most of a large dataset's subjects, so without this a run re-derived
    nearly every subject's key on every page (most of the open time at 1M records)."""

    _SQL = "SELECT token, dek_version, kek_version, wrapped FROM vault_subjects WHERE {in}"

    def __init__(self, keys: SubjectKeys) -> None:
        self._keys = keys
        self._memo: dict[str, tuple[tuple[int, int, bytes, bytes], FieldKey]] = {}

    def load(self, cur: Cursor, tokens: Sequence[str]) -> dict[str, FieldKey]:
        rows = select_in(cur, self._keys.dialect, self._SQL, "token", tokens)
        erasure = self._keys.provider.erasure.get_many(str(r[0]) for r in rows)
        out: dict[str, FieldKey] = {}
        states: dict[str, tuple[int, int, bytes, bytes]] = {}
        for token, dek_version, kek_version, wrapped in rows:
            token = str(token)
            secret = erasure.get(token)
            if secret is None:
                states[token] = (-1, -1, b"", b"")  # ``load`` says why it cannot open it
                continue
            state = (int(dek_version), int(kek_version), bytes(wrapped), bytes(secret))
            known = self._memo.get(token)
            if known is not None and known[0] == state:
                out[token] = known[1]
            else:
                states[token] = state
        if states:
            for token, key in self._keys.load(cur, list(states)).items():
                state = states[token]
                if state[0] == key[1]:  # the version this page read: safe to reuse
                    self._memo[token] = (state, key)
                out[token] = key
        return out
