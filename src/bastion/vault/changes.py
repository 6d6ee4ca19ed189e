"""The vault's change feed: what changed, in commit order, never to what.

Every writer of ``vault_records`` (ingest, the write API, shredding, the retention sweeper)
adds one ``vault_changes`` row per record it touches, in the same transaction and under the
vault lock, so a follower that reads the feed in ``seq`` order sees the commits in the order
they happened, and a change it has seen is never taken back. A row names the dataset, the
record key, the record's new version, the operation and the fields written: keys and names,
no values. The cursor a follower keeps is the last ``seq`` it processed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from bastion.store import Cursor, Database

ChangeOp = Literal["insert", "update", "delete", "erase"]
CHANGE_OPS: tuple[ChangeOp, ...] = ("insert", "update", "delete", "erase")
CHANGE_COLUMNS = ("dataset", "record_key", "version", "op", "fields", "at")
MAX_PAGE = 10_000

# dataset, record key, version, op, field names (JSON list), at
ChangeRow = tuple[str, str, int, str, str, str]


@dataclass(frozen=True)
class Change:
    seq: int
    dataset: str
    record_key: str
    version: int
    op: ChangeOp
    fields: tuple[str, ...]
    at: str

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "record_id": self.record_key,
            "version": self.version,
            "op": self.op,
            "fields": list(self.fields),
            "at": self.at,
        }


def change_row(
    dataset: str, record_key: str, version: int, op: ChangeOp, fields: Sequence[str], at: str
) -> ChangeRow:
    return (dataset, record_key, version, op, json.dumps(sorted(fields)), at)


def record_changes(db: Database, cur: Cursor, rows: Sequence[ChangeRow]) -> None:
    """Append change rows within the caller's transaction (which holds the vault lock)."""
    if rows:
        db.copy_rows(cur, "vault_changes", CHANGE_COLUMNS, rows)


def erase_changes(cur: Cursor, subject_token: str, at: str) -> int:
    """One ``erase`` change for every record a shredded subject still has."""
    return cur.execute(
        "INSERT INTO vault_changes (dataset, record_key, version, op, fields, at) "
        "SELECT dataset, record_key, version + 1, 'erase', '[]', ? FROM vault_records "
        "WHERE subject = ?",
        (at, subject_token),
    ).rowcount


def read_changes(db: Database, dataset: str, after: int, limit: int) -> list[Change]:
    """Up to ``limit`` changes of ``dataset`` after cursor ``after``, oldest first."""
    if not 0 < limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    rows = db.query(
        "SELECT seq, dataset, record_key, version, op, fields, at FROM vault_changes "
        "WHERE dataset = ? AND seq > ? ORDER BY seq LIMIT ?",
        (dataset, after, limit),
    )
    return [
        Change(
            seq=int(seq),
            dataset=str(ds),
            record_key=str(key),
            version=int(version),
            op=cast(ChangeOp, str(op)),
            fields=tuple(json.loads(fields)),
            at=str(at),
        )
        for seq, ds, key, version, op, fields, at in rows
    ]


def last_seq(db: Database) -> int:
    """The newest change's ``seq`` (0 when there is none): a follower's starting cursor."""
    row = db.query("SELECT MAX(seq) FROM vault_changes")
    return int(row[0][0]) if row and row[0][0] is not None else 0
