"""What the vault may open: an explicit, finite list of (record, field) pairs, already recorded.

The request path is decide, plan, *record*, open. A :class:`ReadPlan` names exactly the
fields to open; a :class:`RecordedPlan` is that plan together with the ledger
:class:`~bastion.ledger.api.Receipt` of the entry that recorded it. :meth:`Vault.open` takes
only a ``RecordedPlan``, so no code can open a value without first holding a ledger index,
and there is no call that opens "everything" or "all fields of a record".

A ``RecordedPlan`` built with :meth:`RecordedPlan.bind` also checks that the recorded entry
is the one the receipt names (RFC 6962 leaf hash) and that it is an allowing
``access.decision`` that lists every pair of the plan: the log then says exactly what was
opened, not merely that something was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from bastion.catalog import Value, to_jsonable
from bastion.errors import InputError, IntegrityError
from bastion.events import AccessDecision, decode_event
from bastion.ledger.api import Receipt

MAX_PLAN_ITEMS = 1_000_000


class FieldRef(NamedTuple):
    """One value: a record (by its vault record key) and one of its fields."""

    record: str
    field: str


@dataclass(frozen=True)
class ReadPlan:
    dataset: str
    items: tuple[FieldRef, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple) or not all(
            isinstance(i, FieldRef) for i in self.items
        ):
            raise InputError(
                "a read plan's items must be a tuple of FieldRef", dataset=self.dataset
            )
        if len(self.items) > MAX_PLAN_ITEMS:
            raise InputError(
                f"a read plan may name at most {MAX_PLAN_ITEMS} values", dataset=self.dataset
            )
        if len(set(self.items)) != len(self.items):
            raise InputError("a read plan names the same value twice", dataset=self.dataset)

    @classmethod
    def of(cls, dataset: str, pairs: Iterable[tuple[str, str]]) -> ReadPlan:
        """Build from ``(record, field)`` pairs, dropping duplicates but keeping order."""
        return cls(dataset, tuple(dict.fromkeys(FieldRef(r, f) for r, f in pairs)))

    @property
    def records(self) -> list[str]:
        return list(dict.fromkeys(i.record for i in self.items))

    def __len__(self) -> int:
        return len(self.items)


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash of a log entry."""
    return hashlib.sha256(b"\x00" + entry).digest()


@dataclass(frozen=True)
class RecordedPlan:
    """A plan plus the receipt of its ledger entry. The only thing ``Vault.open`` accepts."""

    plan: ReadPlan
    receipt: Receipt
    entry: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.plan, ReadPlan):
            raise TypeError("RecordedPlan needs a ReadPlan")
        if not isinstance(self.receipt, Receipt):
            raise TypeError("RecordedPlan needs a ledger Receipt")
        if self.receipt.index < 0 or len(self.receipt.leaf_hash) != 32:
            raise InputError("a recorded plan needs a real ledger index and leaf hash")
        if self.entry is not None:
            _check_entry_covers(self.plan, self.receipt, self.entry)

    @classmethod
    def bind(cls, plan: ReadPlan, receipt: Receipt, entry: bytes) -> RecordedPlan:
        """A recorded plan whose ledger entry has been checked to list every value it opens."""
        return cls(plan, receipt, entry)


def _check_entry_covers(plan: ReadPlan, receipt: Receipt, entry: bytes) -> None:
    if leaf_hash(entry) != receipt.leaf_hash:
        raise IntegrityError("the ledger entry does not match the receipt's leaf hash")
    try:
        event = decode_event(entry)
    except ValueError:
        raise IntegrityError("the recorded ledger entry is not a Bastion event") from None
    if not isinstance(event, AccessDecision) or event.decision != "allow":
        raise InputError("the recorded entry is not an allowing access decision")
    released = {(r.dataset, r.record, r.field) for r in event.released}
    for item in plan.items:
        if (plan.dataset, item.record, item.field) not in released:
            raise InputError(
                "the plan opens a value its ledger entry does not list",
                dataset=plan.dataset,
                field=item.field,
            )


@dataclass(frozen=True)
class OpenedValues(Mapping[FieldRef, Value]):
    """The opened values of one recorded plan, keyed by the plan's own items."""

    dataset: str
    receipt: Receipt
    opened: Mapping[FieldRef, Value]

    def __getitem__(self, key: FieldRef) -> Value:
        return self.opened[key]

    def __iter__(self) -> Iterator[FieldRef]:
        return iter(self.opened)

    def __len__(self) -> int:
        return len(self.opened)

    def get_value(self, record: str, field: str) -> Value:
        return self.opened[FieldRef(record, field)]

    def by_record(self) -> dict[str, dict[str, Value]]:
        out: dict[str, dict[str, Value]] = {}
        for ref, value in self.opened.items():
            out.setdefault(ref.record, {})[ref.field] = value
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "receipt": self.receipt.to_json(),
            "records": {
                rec: {f: to_jsonable(v) for f, v in fields.items()}
                for rec, fields in self.by_record().items()
            },
        }
