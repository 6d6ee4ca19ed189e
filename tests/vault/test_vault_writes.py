"""The vault's write path: staged outside the ledger commit, applied inside it, with versions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import vault_rows as R

from bastion.errors import InputError
from bastion.events import Actor
from bastion.vault import Vault
from bastion.vault.changes import read_changes
from bastion.vault.schema import VAULT_LOCK
from bastion.vault.writes import VaultWrites, WriteOp, WriteRefused, WrittenRecord

OPERATOR = Actor(id="ops", kind="operator")
Recorded = Callable[..., object]


def _apply(vault: Vault, staged: object) -> list[WrittenRecord]:
    with vault.db.transaction(lock="ledger-test") as cur:
        return VaultWrites(vault).apply(cur, staged)  # type: ignore[arg-type]


def _open(vault: Vault, recorded: Recorded, dataset: str, key: str, fields: list[str]) -> dict:
    opened = vault.open(recorded(dataset, [(key, f) for f in fields]))  # type: ignore[arg-type]
    return {f: opened.get_value(key, f) for f in fields}  # type: ignore[attr-defined]


def _user_key(vault: Vault, user_id: str) -> str:
    token = vault.pseudonym_of(user_id)
    assert token is not None
    return token


def test_insert_then_change_then_delete_with_versions(vault: Vault, recorded: Recorded) -> None:
    writes = VaultWrites(vault)
    [done] = _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(1)]))
    assert (done.version, done.created) == (1, True)
    key = _user_key(vault, "u00001")
    assert done.record_key == key
    staged = writes.stage(
        "users",
        WriteOp.UPDATE,
        [{"email": "new@example.com"}],
        record_id="u00001",
        expected_version=1,
    )
    assert staged.records[0].fields == ("email",)
    [changed] = _apply(vault, staged)
    assert changed.version == 2
    got = _open(vault, recorded, "users", key, ["email", "name", "phone"])
    assert got["email"] == "new@example.com"
    assert got["name"] == R.user(1)["name"]  # untouched fields keep their sealed values
    # A stale If-Match is refused with 412 and changes nothing.
    stale = writes.stage(
        "users",
        WriteOp.UPDATE,
        [{"email": "x@example.com"}],
        record_id="u00001",
        expected_version=1,
    )
    with pytest.raises(WriteRefused) as err:
        _apply(vault, stale)
    assert err.value.status == 412
    assert _open(vault, recorded, "users", key, ["email"])["email"] == "new@example.com"
    [gone] = _apply(vault, writes.stage("users", WriteOp.DELETE, [], record_id="u00001"))
    assert gone.version == 3
    ops = [(c.op, c.version) for c in read_changes(vault.db, "users", 0, 100)]
    assert ops == [("insert", 1), ("update", 2), ("delete", 3)]
    with pytest.raises(WriteRefused) as err:
        writes.stage("users", WriteOp.UPDATE, [{"email": "a@b.co"}], record_id="u00001")
    assert err.value.status == 404


def test_a_duplicate_insert_is_409_and_writes_nothing(vault: Vault) -> None:
    writes = VaultWrites(vault)
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(1)]))
    staged = writes.stage("users", WriteOp.INSERT, [R.user(2), R.user(1)])
    with pytest.raises(WriteRefused) as err:
        _apply(vault, staged)
    assert err.value.status == 409 and err.value.row == 2
    assert vault.pseudonym_of("u00002") is not None  # its pseudonym, but no record:
    assert vault.stats().records["users"] == 1


def test_bad_values_name_row_and_field(vault: Vault) -> None:
    writes = VaultWrites(vault)
    with pytest.raises(InputError) as err:
        writes.stage("users", WriteOp.INSERT, [R.user(1), R.user(2, email=12)])
    assert (err.value.row, err.value.field) == (2, "email")
    with pytest.raises(InputError) as err:
        writes.stage("users", WriteOp.INSERT, [R.user(1, shoe_size=9)])
    assert err.value.field == "shoe_size"
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(1)]))
    with pytest.raises(InputError) as err:
        writes.stage("users", WriteOp.UPDATE, [{"email": "x" * 300}], record_id="u00001")
    assert err.value.field == "email"
    with pytest.raises(InputError) as err:
        writes.stage("users", WriteOp.UPDATE, [{"user_id": "u9"}], record_id="u00001")
    assert err.value.field == "user_id"


def test_a_shredded_subject_cannot_be_written_again(vault: Vault) -> None:
    writes = VaultWrites(vault)
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(1)]))
    vault.shred("u00001", OPERATOR, "erasure")
    with pytest.raises(WriteRefused) as err:
        writes.stage("users", WriteOp.UPSERT, [R.user(1)])
    assert err.value.status == 410
    with pytest.raises(WriteRefused) as err:
        writes.stage("events", WriteOp.INSERT, [R.event(1, 1)])
    assert err.value.status == 410


def test_a_shred_between_stage_and_apply_is_410(vault: Vault) -> None:
    writes = VaultWrites(vault)
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(1)]))
    staged = writes.stage("events", WriteOp.INSERT, [R.event(1, 1)])
    vault.shred("u00001", OPERATOR, "erasure")
    with pytest.raises(WriteRefused) as err:
        _apply(vault, staged)
    assert err.value.status == 410
    assert vault.stats().records["events"] == 0


def test_the_commitment_binds_content_and_names_no_value(vault: Vault) -> None:
    writes = VaultWrites(vault)
    a = writes.stage("users", WriteOp.INSERT, [R.user(1)])
    b = writes.stage("users", WriteOp.INSERT, [R.user(1, email="other@example.com")])
    assert a.commitment != b.commitment
    assert a.commitment.startswith("hmac-sha256:")
    assert R.user(1)["email"] not in a.commitment


def test_writes_take_the_vault_lock_name() -> None:
    assert VAULT_LOCK == "vault:keys"
