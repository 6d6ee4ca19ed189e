"""Rotation rewraps data keys without touching ciphertexts; retired keys fail closed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import vault_rows as R

from bastion.clock import FixedClock
from bastion.errors import InputError, KeyUnavailable
from bastion.events import Actor, KeyRotation
from bastion.keys import softhsm
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.store import Database
from bastion.vault import RecordedPlan, Vault

Recorded = Callable[[str, list[tuple[str, str]]], RecordedPlan]
OPERATOR = Actor(id="keyadmin", kind="operator")


def _sealed_column(vault: Vault) -> dict[str, bytes]:
    return {
        f"{d}/{k}": bytes(s)
        for d, k, s in vault.db.query("SELECT dataset, record_key, sealed FROM vault_records")
    }


def _wrapped(vault: Vault) -> dict[str, tuple[int, bytes]]:
    return {
        t: (int(v), bytes(w))
        for t, v, w in vault.db.query("SELECT token, kek_version, wrapped FROM vault_subjects")
    }


def test_rotate_rewraps_every_key_and_leaves_ciphertexts(
    any_vault: Vault, recorded: Recorded
) -> None:
    any_vault.ingest_rows("users", R.numbered([R.user(i) for i in range(25)]))
    any_vault.ingest_rows("events", R.numbered([R.event(i, i % 25) for i in range(50)]))
    sealed_before, wrapped_before = _sealed_column(any_vault), _wrapped(any_vault)
    seen: list[tuple[int, int]] = []
    event = any_vault.rotate(
        OPERATOR, "annual rotation", batch_size=10, progress=lambda d, t: seen.append((d, t))
    )
    assert isinstance(event, KeyRotation)
    assert (event.old_version, event.new_version) == (1, 2)
    assert event.rewrapped == 25 + 1  # 25 data keys and the vault's identity secret
    assert seen[-1] == (26, 26)
    assert _sealed_column(any_vault) == sealed_before  # no field ciphertext touched
    wrapped_after = _wrapped(any_vault)
    assert {v for v, _ in wrapped_after.values()} == {2}
    assert all(wrapped_after[t][1] != wrapped_before[t][1] for t in wrapped_before)
    any_vault.retire(1, OPERATOR, "rotation complete")
    token = any_vault.pseudonym_of("u00007")
    assert token
    assert any_vault.open(recorded("users", [(token, "email")])).get_value(token, "email") == (
        "person7@example.com"
    )
    assert any_vault.pseudonym_of("u00007") == token  # the identity secret survived too
    assert [(v.version, v.state) for v in any_vault.provider.versions()] == [
        (1, "retired"),
        (2, "current"),
    ]


def test_retire_refuses_a_version_still_in_use(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(1)]))
    vault.provider.rotate()  # a new version, but nothing rewrapped yet
    with pytest.raises(InputError, match="still wraps 2 keys"):
        vault.retire(1, OPERATOR, "too early")
    assert [v.state for v in vault.provider.versions()] == ["active", "current"]


def test_retired_key_fails_closed_for_an_old_copy(vault: Vault, recorded: Recorded) -> None:
    vault.ingest_rows("users", R.numbered([R.user(1)]))
    token = vault.pseudonym_of("u00001")
    assert token
    old_wrapped = _wrapped(vault)[token]
    vault.rotate(OPERATOR, "rotation")
    vault.retire(1, OPERATOR, "done")
    # Put back the data key as an old copy of the database had it (wrapped under v1).
    with vault.db.transaction() as cur:
        cur.execute(
            "UPDATE vault_subjects SET kek_version = ?, wrapped = ? WHERE token = ?",
            (old_wrapped[0], old_wrapped[1], token),
        )
    with pytest.raises(KeyUnavailable, match="retired"):
        vault.open(recorded("users", [(token, "email")]))


def test_rotation_resumes_after_interruption(vault: Vault) -> None:
    vault.ingest_rows("users", R.numbered([R.user(i) for i in range(30)]))
    calls = 0

    def stop_after_first_batch(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vault.rotate(OPERATOR, "rotation", batch_size=10, progress=stop_after_first_batch)
    assert sorted(v for v, _ in _wrapped(vault).values()).count(2) == 10
    event = vault.rotate(OPERATOR, "rotation, again", batch_size=10)
    # The second run made version 3 and rewrapped everything (from 1 and from 2) under it.
    assert event.new_version == 3 and event.rewrapped == 31
    assert {v for v, _ in _wrapped(vault).values()} == {3}


# python-pkcs11 complains (harmlessly) when a search iterator of the dead session is freed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_hsm_unavailable_fails_closed(
    db: Database,
    clock: FixedClock,
    hsm_token: softhsm.SoftHsmToken,
    tmp_path: Path,
    recorded: Recorded,
) -> None:
    provider = Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path)
    vault = R.make_vault(db, provider, clock)
    vault.ingest_rows("users", R.numbered([R.user(1)]))
    token = vault.pseudonym_of("u00001")
    assert token
    provider._session.close()  # the HSM goes away
    with pytest.raises(KeyUnavailable):
        vault.open(recorded("users", [(token, "email")]))
    with pytest.raises(KeyUnavailable):
        vault.ingest_rows("users", R.numbered([R.user(2)]))
    assert int(db.query("SELECT COUNT(*) FROM vault_records")[0][0]) == 1
    with pytest.raises(KeyUnavailable):
        vault.rotate(OPERATOR, "rotation")
