"""A RecordedPlan exists only once its ledger entries are checked to record every value it opens.

Each test tries to open more than the log says: an entry that omits a pair, a receipt for
another entry, a denial, a withheld field, entries of different requests or commits, a changed
copy of a bound plan.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest
import vault_rows as R

from bastion.errors import InputError, IntegrityError
from bastion.events import AccessDecision, Actor, Approval, FieldRelease, encode_event
from bastion.ledger.api import Receipt
from bastion.vault import ReadPlan, RecordedPlan, Vault
from bastion.vault.plan import leaf_hash


def _decision(**over: Any) -> bytes:
    fields: dict[str, Any] = {
        "actor": Actor(id="analyst-7", kind="principal"),
        "reason": "support ticket",
        "at": "2026-01-01T00:00:00Z",
        "request_id": "req-1",
        "action": "read",
        "dataset": "users",
        "decision": "allow",
    }
    fields.update(over)
    return encode_event(AccessDecision(**fields))


def _explicit(pairs: list[tuple[str, str]], **over: Any) -> bytes:
    released = [
        FieldRelease(dataset="users", record=r, field=f, transform="clear") for r, f in pairs
    ]
    return _decision(released=released, **over)


def _compact(records: list[str], fields: dict[str, str], **over: Any) -> bytes:
    return _decision(released_records=records, released_fields=fields, **over)


def _at(index: int, entry: bytes) -> tuple[Receipt, bytes]:
    return Receipt(index, leaf_hash(entry)), entry


PLAN = ReadPlan.of("users", [("r1", "email"), ("r1", "phone"), ("r2", "email")])


# ---------------------------------------------------------------------------- the forms


def test_explicit_pairs_bind() -> None:
    entry = _explicit([("r1", "email"), ("r1", "phone"), ("r2", "email")])
    bound = RecordedPlan.bind(PLAN, *_at(7, entry))
    assert bound.plan == PLAN and bound.receipt.index == 7 and bound.receipts == (bound.receipt,)


def test_compact_bulk_form_binds() -> None:
    entry = _compact(["r1", "r2"], {"email": "clear", "phone": "masked"})
    assert RecordedPlan.bind(PLAN, *_at(3, entry)).receipt.index == 3


def test_release_split_over_entries_of_one_commit_binds() -> None:
    first = _compact(["r1"], {"email": "clear", "phone": "clear"})
    second = _compact(["r2"], {"email": "clear", "phone": "clear"})
    bound = RecordedPlan.bind_all(PLAN, [_at(10, first), _at(11, second)])
    assert [r.index for r in bound.receipts] == [10, 11]


def test_empty_plan_still_needs_an_allowing_entry() -> None:
    empty = ReadPlan.of("users", [])
    assert len(RecordedPlan.bind(empty, *_at(1, _compact([], {}))).plan) == 0
    with pytest.raises(InputError, match="allowing"):
        RecordedPlan.bind(empty, *_at(1, _decision(decision="deny", denied_reason="no")))


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "entry",
    [
        _explicit([("r1", "email"), ("r1", "phone")]),  # omits (r2, email)
        _compact(["r1", "r2"], {"email": "clear"}),  # omits (r1, phone)
        _compact(["r1"], {"email": "clear", "phone": "clear"}),  # omits r2
        _compact(["r1", "r2"], {"email": "clear", "phone": "deny"}),  # phone withheld
        _decision(  # phone listed as withheld, not released
            released=[
                FieldRelease(dataset="users", record=r, field=f, transform=t)
                for r, f, t in [
                    ("r1", "email", "clear"),
                    ("r1", "phone", "deny"),
                    ("r2", "email", "clear"),
                ]
            ]
        ),
        _compact(["r1", "r2"], {"email": "clear", "phone": "clear"}, dataset="events"),
        _decision(  # the pairs name another dataset
            released=[
                FieldRelease(dataset="events", record=r, field=f, transform="clear")
                for r, f in [("r1", "email"), ("r1", "phone"), ("r2", "email")]
            ]
        ),
    ],
    ids=[
        "explicit-omits-pair",
        "compact-omits-field",
        "compact-omits-record",
        "compact-field-denied",
        "explicit-field-denied",
        "compact-other-dataset",
        "explicit-other-dataset",
    ],
)
def test_entry_that_does_not_list_every_pair_is_refused(entry: bytes) -> None:
    with pytest.raises(InputError, match="does not list"):
        RecordedPlan.bind(PLAN, *_at(5, entry))


def test_receipt_for_another_entry_is_refused() -> None:
    entry = _compact(["r1", "r2"], {"email": "clear", "phone": "clear"})
    other = _compact(["r1", "r2"], {"email": "clear", "phone": "clear"}, request_id="req-2")
    with pytest.raises(IntegrityError, match="leaf hash"):
        RecordedPlan.bind(PLAN, Receipt(5, leaf_hash(other)), entry)
    with pytest.raises(IntegrityError, match="leaf hash"):
        RecordedPlan.bind(PLAN, Receipt(5, b"\x00" * 32), entry)
    # One changed byte in the entry (the same receipt) is refused too.
    receipt, _ = _at(5, entry)
    with pytest.raises(IntegrityError, match="leaf hash"):
        RecordedPlan.bind(PLAN, receipt, entry.replace(b"req-1", b"req-9"))
    # Among several entries, one mismatch is enough.
    first = _compact(["r1"], {"email": "clear", "phone": "clear"})
    second = _compact(["r2"], {"email": "clear"})
    with pytest.raises(IntegrityError, match="leaf hash"):
        RecordedPlan.bind_all(PLAN, [_at(1, first), (Receipt(2, leaf_hash(first)), second)])


def test_deny_decision_is_refused_even_when_it_lists_the_pairs() -> None:
    entry = _compact(
        ["r1", "r2"], {"email": "clear", "phone": "clear"}, decision="deny", denied_reason="no"
    )
    with pytest.raises(InputError, match="allowing"):
        RecordedPlan.bind(PLAN, *_at(5, entry))


def test_other_event_types_and_garbage_are_refused() -> None:
    approval = encode_event(
        Approval(
            actor=Actor(id="sofia"),
            reason="ok",
            at="2026-01-01T00:00:00Z",
            request_id="ar_1",
            step="granted",
        )
    )
    with pytest.raises(InputError, match="allowing"):
        RecordedPlan.bind(PLAN, *_at(5, approval))
    with pytest.raises(IntegrityError, match="not a Bastion event"):
        RecordedPlan.bind(PLAN, *_at(5, b'{"type":"access.decision"}'))


def test_several_entries_must_be_one_release() -> None:
    first = _compact(["r1"], {"email": "clear", "phone": "clear"})
    second = _compact(["r2"], {"email": "clear"})
    # A gap: not one commit.
    with pytest.raises(InputError, match="consecutive"):
        RecordedPlan.bind_all(PLAN, [_at(10, first), _at(12, second)])
    # The same entry twice does not make a second one.
    with pytest.raises(InputError, match="consecutive"):
        RecordedPlan.bind_all(PLAN, [_at(10, first), _at(10, first)])
    # Entries of two requests.
    other_request = _compact(["r2"], {"email": "clear"}, request_id="req-2")
    with pytest.raises(InputError, match="same request"):
        RecordedPlan.bind_all(PLAN, [_at(10, first), _at(11, other_request)])
    # Every entry must allow: a denial beside an allow is refused.
    denial = _compact(["r2"], {"email": "clear"}, decision="deny", denied_reason="no")
    with pytest.raises(InputError, match="allowing"):
        RecordedPlan.bind_all(PLAN, [_at(10, first), _at(11, denial)])
    # Together the entries still have to cover the plan.
    with pytest.raises(InputError, match="does not list"):
        RecordedPlan.bind_all(PLAN, [_at(10, first)])
    with pytest.raises(InputError, match="at least one"):
        RecordedPlan.bind_all(PLAN, [])


def test_no_unchecked_or_changed_recorded_plan() -> None:
    entry = _compact(["r1", "r2"], {"email": "clear", "phone": "clear"})
    bound = RecordedPlan.bind(PLAN, *_at(5, entry))
    bigger = ReadPlan.of("users", [*[(i.record, i.field) for i in PLAN.items], ("r3", "email")])
    with pytest.raises(TypeError, match="bind"):
        RecordedPlan(bigger, bound.receipts)
    with pytest.raises(AttributeError):
        bound.plan = bigger
    with pytest.raises(TypeError):
        dataclasses.replace(bound, plan=bigger)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        pickle.dumps(bound)
    assert copy.copy(bound) is bound and copy.deepcopy(bound) is bound


def test_vault_opens_a_bound_compact_plan_and_nothing_unbound(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(1), R.user(2)]))
    u1, u2 = vault.pseudonym_of("u00001"), vault.pseudonym_of("u00002")
    assert u1 is not None and u2 is not None
    plan = ReadPlan.of("users", [(u1, "email"), (u2, "email")])
    first = _compact([u1], {"email": "clear"})
    second = _compact([u2], {"email": "masked"})
    opened = vault.open(RecordedPlan.bind_all(plan, [_at(20, first), _at(21, second)]))
    assert opened.get_value(u1, "email") == "person1@example.com"
    assert opened.get_value(u2, "email") == "person2@example.com"
    with pytest.raises(TypeError):
        vault.open(plan)  # type: ignore[arg-type]
