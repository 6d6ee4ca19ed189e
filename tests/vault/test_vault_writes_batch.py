"""A write batch applied in bulk (one read of what is stored, one insert of what is new):
versions still count per record, and a bad record anywhere leaves nothing of the batch."""

from __future__ import annotations

import pytest
import vault_rows as R

from bastion.errors import InputError
from bastion.vault import Vault
from bastion.vault.changes import read_changes
from bastion.vault.writes import VaultWrites, WriteOp, WriteRefused, WrittenRecord


def _apply(vault: Vault, staged: object) -> list[WrittenRecord]:
    with vault.db.transaction(lock="ledger-test") as cur:
        return VaultWrites(vault).apply(cur, staged)  # type: ignore[arg-type]


def _version(vault: Vault, key: str) -> int:
    rows = vault.db.query(
        "SELECT version FROM vault_records WHERE dataset = 'users' AND record_key = ?", (key,)
    )
    return int(rows[0][0])


@pytest.mark.parametrize("op", [WriteOp.INSERT, WriteOp.UPSERT])
def test_a_batch_naming_a_record_twice_is_refused_at_staging(vault: Vault, op: WriteOp) -> None:
    writes = VaultWrites(vault)
    with pytest.raises(InputError) as err:
        writes.stage("users", op, [R.user(1), R.user(2), R.user(1, language="fr")])
    assert (err.value.row, err.value.field) == (3, "user_id")
    assert vault.stats().records.get("users", 0) == 0


def test_a_bulk_upsert_versions_each_record_from_what_is_stored(vault: Vault) -> None:
    writes = VaultWrites(vault)
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(2)]))
    done = _apply(vault, writes.stage("users", WriteOp.UPSERT, [R.user(n) for n in (1, 2, 3)]))
    assert [(w.record_id, w.version, w.created) for w in done] == [
        ("u00001", 1, True),
        ("u00002", 2, False),
        ("u00003", 1, True),
    ]
    assert [_version(vault, w.record_key) for w in done] == [1, 2, 1]
    ops = [(c.op, c.version) for c in read_changes(vault.db, "users", 0, 10)]
    assert ops == [("insert", 1), ("insert", 1), ("update", 2), ("insert", 1)]
    assert vault.stats().records["users"] == 3


def test_a_bulk_batch_with_a_taken_id_late_in_it_stores_nothing(vault: Vault) -> None:
    writes = VaultWrites(vault)
    _apply(vault, writes.stage("users", WriteOp.INSERT, [R.user(40)]))
    staged = writes.stage("users", WriteOp.INSERT, [R.user(n) for n in range(1, 41)])
    with pytest.raises(WriteRefused) as err:
        _apply(vault, staged)
    assert err.value.status == 409 and err.value.row == 40
    assert vault.stats().records["users"] == 1
