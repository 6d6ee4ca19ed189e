"""The key holder stays in control of a running process, on both providers.

* Revocation: key material held in memory is trusted for at most ``revocation_check_s`` (by
  the injectable clock); once the local key files are removed, or the HSM's keys destroyed,
  every cache is dropped and nothing more is unwrapped or handed out. Put back, they serve
  again.
* A PKCS#11 token that goes away and comes back is used again without a restart (the lost
  session is reopened, with backoff).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.clock import FixedClock
from bastion.errors import KeyUnavailable
from bastion.keys import softhsm
from bastion.keys.local import LocalKeyring
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.keys.provider import KeyProvider

BOUND = 10.0


def _revoke_local(keys_dir: Path, keep: Path) -> Callable[[], None]:
    """Remove the KEK files and the erasure store (as the custodian revoking would); returns
    what puts them back."""
    keep.mkdir()
    moved = [p for p in keys_dir.iterdir() if p.name.startswith("kek-") or p.name == "erasure.db"]
    for path in moved:
        shutil.move(path, keep / path.name)

    def restore() -> None:
        for path in moved:
            shutil.move(keep / path.name, path)

    return restore


_DESTROY = """
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
library, label, pin = sys.argv[1:]
session = pkcs11.lib(library).get_token(token_label=label).open(user_pin=pin, rw=True)
for key in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})):
    key.destroy()
session.close()
"""


def _destroy_hsm_keys(token: softhsm.SoftHsmToken) -> None:
    """The custodian destroys Bastion's keys in the token, with a tool of its own (another
    process, as it would be)."""
    subprocess.run(
        [sys.executable, "-c", _DESTROY, token.library, token.label, token.pin],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_local_revocation_takes_effect_within_the_bound(tmp_path: Path) -> None:
    clock = FixedClock()
    p = LocalKeyring.create(tmp_path / "keys", clock=clock, revocation_check_s=BOUND)
    dek = secrets.token_bytes(32)
    wrapped = p.wrap(dek, b"s")
    made = p.erasure.create_many(["subject-1"])
    restore = _revoke_local(p.keys_dir, tmp_path / "kept")
    # Within the bound the key held in memory is trusted (one timestamp compare per use)...
    clock.advance(timedelta(seconds=BOUND - 1))
    assert p.unwrap(wrapped, b"s") == dek
    # ...and past it, nothing: not the KEK, not an erasure secret, and the caches are gone.
    clock.advance(timedelta(seconds=1))
    with pytest.raises(KeyUnavailable, match="revoked"):
        p.unwrap(wrapped, b"s")
    with pytest.raises(KeyUnavailable, match="revoked"):
        p.erasure.get_many(["subject-1"])
    with pytest.raises(KeyUnavailable):
        p.wrap(dek, b"s")
    assert not p._aeads and p.erasure._conn is None
    # The key files come back: so does the service, at the next check.
    restore()
    with pytest.raises(KeyUnavailable):
        p.unwrap(wrapped, b"s")  # still revoked until then
    clock.advance(timedelta(seconds=BOUND))
    assert p.unwrap(wrapped, b"s") == dek
    assert p.erasure.get_many(["subject-1"]) == made
    p.close()


def test_an_unreadable_erasure_store_revokes(tmp_path: Path) -> None:
    clock = FixedClock()
    p = LocalKeyring.create(tmp_path / "keys", clock=clock, revocation_check_s=BOUND)
    wrapped = p.wrap(b"k" * 32)
    (p.keys_dir / "erasure.db").unlink()  # the KEK stays: the erasure store alone is gone
    clock.advance(timedelta(seconds=BOUND))
    with pytest.raises(KeyUnavailable, match="erasure store"):
        p.unwrap(wrapped)
    p.close()


def test_retiring_a_version_is_not_a_revocation(tmp_path: Path) -> None:
    clock = FixedClock()
    p = LocalKeyring.create(tmp_path / "keys", clock=clock, revocation_check_s=BOUND)
    old = p.wrap(b"k" * 32)
    p.rotate()
    new = p.wrap(b"n" * 32)
    other = LocalKeyring(p.keys_dir, clock=clock)  # another process retires v1
    other.retire(1)
    clock.advance(timedelta(seconds=BOUND))
    assert p.unwrap(new) == b"n" * 32
    with pytest.raises(KeyUnavailable, match="retired"):
        p.unwrap(old)
    other.close()
    p.close()


def test_hsm_key_destroyed_stops_unwrapping_within_the_bound(
    hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    clock = FixedClock()
    p = Pkcs11Provider.create(
        hsm_token.library,
        hsm_token.label,
        hsm_token.pin,
        tmp_path / "keys",
        clock=clock,
        revocation_check_s=BOUND,
    )
    wrapped = p.wrap(b"k" * 32)
    p.erasure.create_many(["subject-1"])
    epoch = p.revalidate()
    _destroy_hsm_keys(hsm_token)
    clock.advance(timedelta(seconds=BOUND))
    assert p.revalidate() != epoch  # holders of derived keys drop theirs
    with pytest.raises(KeyUnavailable):
        p.unwrap(wrapped)
    with pytest.raises(KeyUnavailable):
        p.erasure.get_many(["subject-1"])
    p.close()


def _until(check: Callable[[], bytes], deadline_s: float) -> bytes:
    """``check()``'s result once it stops raising KeyUnavailable (polling), within the time."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return check()
        except KeyUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# python-pkcs11 complains (harmlessly) when a search iterator of a dead session is freed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(120)
def test_hsm_token_that_comes_back_is_used_again(
    hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    p = Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path / "k")
    dek = secrets.token_bytes(32)
    wrapped = p.wrap(dek, b"s")
    made = p.erasure.create_many(["subject-1"])
    where = softhsm.token_dir(hsm_token)
    away = tmp_path / "away"
    shutil.move(where, away)
    try:
        for _ in range(3):  # gone: fails closed, every time
            with pytest.raises(KeyUnavailable):
                p.unwrap(wrapped, b"s")
            time.sleep(0.3)
    finally:
        shutil.move(away, where)
    # Back: the same provider (no restart) reopens its session and serves again.
    assert _until(lambda: p.unwrap(wrapped, b"s"), 30) == dek
    assert p.erasure.get_many(["subject-1"]) == made
    assert p.wrap(dek, b"s").version == 1
    p.close()


def test_revalidate_is_a_timestamp_compare_between_checks(tmp_path: Path) -> None:
    clock = FixedClock()
    p: KeyProvider = LocalKeyring.create(tmp_path / "keys", clock=clock)
    epoch = p.revalidate()
    (tmp_path / "keys" / "erasure.db").unlink()
    assert p.revalidate() == epoch  # not re-checked: no file was looked at
    p.close()
