"""Records as stored, read once for a release, before it is recorded; nothing decrypted.

A release reads ``vault_records`` once (not once to resolve ids, again to open the sealed
values and a third time for the clear ones): resolving the records it is about to live
subjects also takes each row's clear column (public values and pseudonym tokens, which
decrypt nothing) and its sealed blob, *still sealed*. The sealed blob opens only in
:meth:`Vault.open`, which still takes a ``RecordedPlan`` (the plan bound to the ledger
entries that list every value it opens) and only then unwraps the subjects' keys.

A ``StoredRecords`` is made only here, from the rows the database returned (so what
``open`` decrypts is what the vault read), and cannot be changed or copied into another.
Every sealed value is also bound by AES-GCM to its dataset, record, subject and field, so a
blob moved to another record fails authentication whatever holds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

from bastion.store import Cursor
from bastion.vault.schema import select_in

_MINTED = object()


class StoredRow(NamedTuple):
    subject: str
    clear: str | None  # the clear column's JSON (None: read without values)
    sealed: bytes | None  # the sealed blob, sealed (None: read without values)


class StoredRecords(Mapping[str, StoredRow]):
    """The rows of one dataset's live records, by record key, as one read returned them."""

    __slots__ = ("_rows", "dataset", "with_values")
    dataset: str
    with_values: bool
    _rows: dict[str, StoredRow]

    def __init__(
        self,
        dataset: str,
        rows: dict[str, StoredRow],
        with_values: bool,
        *,
        _minted: object = None,
    ) -> None:
        if _minted is not _MINTED:
            raise TypeError("StoredRecords are made only by the vault's own reads")
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "with_values", with_values)

    @classmethod
    def read(
        cls,
        cur: Cursor,
        dialect: str,
        dataset: str,
        keys: Sequence[str],
        *,
        values: bool,
    ) -> StoredRecords:
        """The records among ``keys`` whose subject still holds its data key (a shredded
        subject's records cannot be opened), with their values still sealed if ``values``."""
        columns = "r.clear, r.sealed" if values else "NULL, NULL"
        found = select_in(
            cur,
            dialect,
            f"SELECT r.record_key, r.subject, {columns} FROM vault_records r "
            "JOIN vault_subjects s ON s.token = r.subject "
            "WHERE r.dataset = ? AND {in}",
            "r.record_key",
            list(dict.fromkeys(keys)),
            [dataset],
        )
        rows = {
            str(key): StoredRow(str(subject), clear, bytes(sealed) if sealed is not None else None)
            for key, subject, clear, sealed in found
        }
        return cls(dataset, rows, values, _minted=_MINTED)

    def subjects(self) -> dict[str, str]:
        """Record key -> subject token."""
        return {key: row.subject for key, row in self._rows.items()}

    def __getitem__(self, key: str) -> StoredRow:
        return self._rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("StoredRecords are immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("StoredRecords are immutable")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("StoredRecords cannot be pickled or copied; read them again")

    def __repr__(self) -> str:
        return f"StoredRecords({self.dataset!r}, {len(self._rows)} records)"
