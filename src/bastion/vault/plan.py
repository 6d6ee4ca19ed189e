"""What the vault may open: an explicit, finite list of (record, field) pairs, already recorded.

The request path is decide, plan, *record*, open. A :class:`ReadPlan` names exactly the
fields to open; a :class:`RecordedPlan` is that plan bound to the ledger entries that recorded
it. :meth:`Vault.open` takes only a ``RecordedPlan``, so no code can open a value without first
holding a ledger index, and there is no call that opens "everything" or "all fields of a
record".

A ``RecordedPlan`` exists only once checked: :meth:`RecordedPlan.bind` (one entry) and
:meth:`RecordedPlan.bind_all` (a release split over several entries of one commit) re-hash
each entry against its receipt (RFC 6962 leaf hash), require an *allowing*
``access.decision``, and require the entries together to list every (record, field) of the
plan, in whichever form the entry records them: explicit ``released`` pairs, or the compact
``released_records`` x ``released_fields`` of a bulk release. The log then says exactly what
was opened, not merely that something was. There is no other way to build one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from bastion.catalog import Value, to_jsonable
from bastion.errors import InputError, IntegrityError
from bastion.events import AccessDecision, decode_event
from bastion.ledger.api import Receipt

MAX_PLAN_ITEMS = 1_000_000
# A field an entry lists with one of these transforms was withheld, not released. (The policy
# part's ``Transform.DENY`` is "deny"; the vault may not import policy, so it is named here.)
_WITHHELD = frozenset({"deny", "denied"})


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


# Held only by this module: ``RecordedPlan`` refuses to be built without it, so the checked
# constructors below are the only way to make one.
_CHECKED = object()


class RecordedPlan:
    """A plan bound to the ledger entries that record it. The only thing ``Vault.open`` takes.

    Build one with :meth:`bind` or :meth:`bind_all`; both check the entries first. It is
    immutable, and cannot be copied into a changed one (``dataclasses.replace``, pickling).
    """

    __slots__ = ("plan", "receipts")
    plan: ReadPlan
    receipts: tuple[Receipt, ...]

    def __init__(
        self, plan: ReadPlan, receipts: tuple[Receipt, ...], *, _checked: object = None
    ) -> None:
        if _checked is not _CHECKED:
            raise TypeError(
                "a RecordedPlan is made only by RecordedPlan.bind or bind_all, which check "
                "that its ledger entries record every value it opens"
            )
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "receipts", receipts)

    @property
    def receipt(self) -> Receipt:
        """The first entry's receipt (the one a response names)."""
        return self.receipts[0]

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a RecordedPlan is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a RecordedPlan is immutable")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a RecordedPlan cannot be pickled or copied; bind the plan again")

    def __copy__(self) -> RecordedPlan:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RecordedPlan:
        return self

    def __repr__(self) -> str:
        indexes = ", ".join(str(r.index) for r in self.receipts)
        return f"RecordedPlan({self.plan.dataset!r}, {len(self.plan)} values, entries [{indexes}])"

    @classmethod
    def bind(cls, plan: ReadPlan, receipt: Receipt, entry: bytes) -> RecordedPlan:
        """The plan bound to one ledger entry, checked to be an allowing access decision that
        lists every value the plan opens."""
        return cls.bind_all(plan, [(receipt, entry)])

    @classmethod
    def bind_all(cls, plan: ReadPlan, recorded: Iterable[tuple[Receipt, bytes]]) -> RecordedPlan:
        """The plan bound to the entries of one release split over several entries (one
        commit, consecutive indexes, one request id); together they must list every value."""
        if not isinstance(plan, ReadPlan):
            raise TypeError("RecordedPlan needs a ReadPlan")
        pairs = list(recorded)
        if not pairs:
            raise InputError("a recorded plan needs at least one ledger entry")
        receipts = tuple(_checked_receipt(r) for r, _ in pairs)
        events = [_allowing_decision(r, e) for r, e in pairs]
        if len(events) > 1:
            _check_one_release(receipts, events)
        _check_covered(plan, events)
        return cls(plan, receipts, _checked=_CHECKED)


def _checked_receipt(receipt: object) -> Receipt:
    if not isinstance(receipt, Receipt):
        raise TypeError("RecordedPlan needs a ledger Receipt")
    if (
        not isinstance(receipt.index, int)
        or receipt.index < 0
        or not isinstance(receipt.leaf_hash, bytes)
        or len(receipt.leaf_hash) != 32
    ):
        raise InputError("a recorded plan needs a real ledger index and leaf hash")
    return receipt


def _allowing_decision(receipt: Receipt, entry: bytes) -> AccessDecision:
    if not isinstance(entry, bytes) or leaf_hash(entry) != receipt.leaf_hash:
        raise IntegrityError("the ledger entry does not match the receipt's leaf hash")
    try:
        event = decode_event(entry)
    except ValueError:
        raise IntegrityError("the recorded ledger entry is not a Bastion event") from None
    if not isinstance(event, AccessDecision) or event.decision != "allow":
        raise InputError("the recorded entry is not an allowing access decision")
    return event


def _check_one_release(receipts: Sequence[Receipt], events: Sequence[AccessDecision]) -> None:
    """Several entries bind one plan only when they are one release: one request, appended
    in one commit (consecutive indexes, no entry twice)."""
    indexes = sorted(r.index for r in receipts)
    if indexes != list(range(indexes[0], indexes[0] + len(indexes))):
        raise InputError("a plan's ledger entries must be consecutive entries of one commit")
    if len({e.request_id for e in events}) != 1:
        raise InputError("a plan's ledger entries must all record the same request")


def _check_covered(plan: ReadPlan, events: Sequence[AccessDecision]) -> None:
    """Every (record, field) of the plan is listed as released by one of the entries."""
    covered: dict[str, frozenset[str]] = {}

    def add(record: str, fields: frozenset[str]) -> None:
        have = covered.get(record)
        if have is None:
            covered[record] = fields
        elif not fields <= have:
            covered[record] = have | fields

    for event in events:
        for r in event.released:  # explicit pairs, each naming its dataset
            if r.dataset == plan.dataset and r.transform not in _WITHHELD:
                add(r.record, frozenset((r.field,)))
        if event.dataset == plan.dataset and event.released_records:
            # The compact bulk form: every listed record released every listed field.
            fields = frozenset(
                f for f, t in (event.released_fields or {}).items() if t not in _WITHHELD
            )
            if fields:
                for record in event.released_records:
                    add(record, fields)
    for item in plan.items:
        if item.field not in covered.get(item.record, ()):
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
