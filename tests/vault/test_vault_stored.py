"""One read of ``vault_records`` per release: rows read while selecting, opened after recording.

``VaultLookup.resolve_records`` / ``records`` read each live record's row once, its sealed
blob still sealed; ``Vault.open(recorded, stored)`` then opens only what the recorded plan
lists, from those rows. These tests hold the boundary: the rows decrypt nothing by
themselves, cannot be made or altered outside the vault, open exactly what the plan says
and no more, and fail closed for a subject shredded between the read and the open.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import vault_rows as R

from bastion.errors import InputError, IntegrityError, KeyUnavailable
from bastion.events import Actor
from bastion.vault import RecordedPlan, StoredRecords, Vault
from bastion.vault.lookup import VaultLookup
from bastion.vault.stored import StoredRow

Recorded = Callable[..., RecordedPlan]
OPERATOR = Actor(id="dpo", kind="operator")


@pytest.fixture
def loaded(vault: Vault) -> Vault:
    vault.ingest_rows("users", R.numbered([R.user(n) for n in (1, 2, 3)]))
    vault.ingest_rows("events", R.numbered([R.event(i, 1 + i % 3) for i in range(1, 4)]))
    return vault


def _read(vault: Vault, ids: list[str], *, values: bool = True) -> tuple[dict[str, str], Any]:
    return VaultLookup(vault).resolve_records("users", ids, values=values)


def test_rows_read_once_open_exactly_the_recorded_plan(loaded: Vault, recorded: Recorded) -> None:
    keys, stored = _read(loaded, ["u00001", "u00002", "u99999"])
    assert set(keys) == {"u00001", "u00002"} and len(stored) == 2
    k1, k2 = keys["u00001"], keys["u00002"]
    assert stored.subjects() == {k1: k1, k2: k2}
    plan = recorded("users", [(k1, "email"), (k2, "phone")])
    from_rows = loaded.open(plan, stored)
    assert from_rows.by_record() == loaded.open(plan).by_record()  # as if read again
    assert from_rows.by_record() == {
        k1: {"email": "person1@example.com"},
        k2: {"phone": "+15550000002"},
    }
    # Clear values come from the same rows; sealed ones are never handed out as clear.
    assert loaded.clear_values("users", [k1], ["region"], stored) == {k1: {"region": "us-west"}}
    with pytest.raises(InputError, match="sealed"):
        loaded.clear_values("users", [k1], ["email"], stored)


def test_the_rows_hold_no_plaintext(loaded: Vault) -> None:
    _keys, stored = _read(loaded, ["u00001"])
    (row,) = stored.values()
    assert row.sealed is not None and b"person1@example.com" not in row.sealed
    assert "person1@example.com" not in (row.clear or "") and "Person Number1" not in repr(row)


def test_stored_rows_are_made_only_by_the_vault_and_cannot_change(
    loaded: Vault, recorded: Recorded
) -> None:
    keys, stored = _read(loaded, ["u00001"])
    k1 = keys["u00001"]
    with pytest.raises(TypeError):
        StoredRecords("users", {k1: StoredRow(k1, "{}", b"forged")}, True)
    with pytest.raises(AttributeError):
        stored.dataset = "events"  # type: ignore[misc]
    with pytest.raises(TypeError):
        copy.copy(stored)
    with pytest.raises(TypeError):  # and open takes nothing else in their place
        loaded.open(recorded("users", [(k1, "email")]), {k1: stored[k1]})  # type: ignore[arg-type]


def test_a_plan_opens_nothing_the_rows_do_not_hold(loaded: Vault, recorded: Recorded) -> None:
    keys, stored = _read(loaded, ["u00001"])
    k2 = loaded.record_key("users", "u00002")
    assert k2 is not None
    with pytest.raises(InputError, match="no such record"):
        loaded.open(recorded("users", [(keys["u00001"], "email"), (k2, "email")]), stored)


def test_rows_of_another_dataset_or_without_values_are_refused(
    loaded: Vault, recorded: Recorded
) -> None:
    keys, _stored = _read(loaded, ["u00001"])
    events, ev_stored = VaultLookup(loaded).resolve_records("events", ["e00000001"], values=True)
    with pytest.raises(InputError, match="dataset"):
        loaded.open(recorded("users", [(keys["u00001"], "email")]), ev_stored)
    assert events
    _keys, bare = _read(loaded, ["u00001"], values=False)
    assert not bare.with_values and bare[keys["u00001"]].sealed is None
    with pytest.raises(InputError, match="without their values"):
        loaded.open(recorded("users", [(keys["u00001"], "email")]), bare)


def test_a_subject_shredded_after_the_read_opens_nothing(loaded: Vault, recorded: Recorded) -> None:
    keys, stored = _read(loaded, ["u00001"])
    k1 = keys["u00001"]
    loaded.shred("u00001", OPERATOR, "erasure request")  # between select and open
    with pytest.raises(KeyUnavailable):
        loaded.open(recorded("users", [(k1, "email")]), stored)
    loaded.purge_shredded()  # and once the row itself is gone, the old read still fails
    with pytest.raises(KeyUnavailable):
        loaded.open(recorded("users", [(k1, "email")]), stored)


def test_a_blob_moved_to_another_record_fails_authentication(
    loaded: Vault, recorded: Recorded
) -> None:
    """Even code that swapped rows could not open one record's values as another's: the
    AAD binds each value to its record and subject."""
    keys, stored = _read(loaded, ["u00001", "u00002"])
    k1, k2 = keys["u00001"], keys["u00002"]
    swapped = dict(stored.items())
    swapped[k1] = StoredRow(k1, stored[k1].clear, stored[k2].sealed)
    object.__setattr__(stored, "_rows", swapped)
    with pytest.raises(IntegrityError):
        loaded.open(recorded("users", [(k1, "email")]), stored)
