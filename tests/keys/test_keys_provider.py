"""The KeyProvider contract, run on the local keyring and on a real SoftHSM2 token."""

from __future__ import annotations

import secrets

import pytest

from bastion.errors import IntegrityError, KeyUnavailable
from bastion.keys.provider import KeyProvider, WrappedKey


def test_wrap_unwrap_round_trip_binds_owner(provider: KeyProvider) -> None:
    dek = secrets.token_bytes(32)
    wrapped = provider.wrap(dek, b"subject-a")
    assert wrapped.version == provider.current_version == 1
    assert dek not in wrapped.blob
    assert provider.unwrap(wrapped, b"subject-a") == dek
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, b"subject-b")


def test_wrapping_is_randomized(provider: KeyProvider) -> None:
    dek = secrets.token_bytes(32)
    assert provider.wrap(dek).blob != provider.wrap(dek).blob


@pytest.mark.parametrize("position", [0, 12, 30, -1])
def test_tampered_wrapped_key_is_an_integrity_error(provider: KeyProvider, position: int) -> None:
    wrapped = provider.wrap(secrets.token_bytes(32), b"x")
    blob = bytearray(wrapped.blob)
    blob[position] ^= 0x01
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(wrapped.version, bytes(blob)), b"x")


def test_truncated_wrapped_key_is_an_integrity_error(provider: KeyProvider) -> None:
    wrapped = provider.wrap(secrets.token_bytes(32))
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(wrapped.version, wrapped.blob[:20]))


def test_relabelled_version_fails(provider: KeyProvider) -> None:
    old = provider.wrap(secrets.token_bytes(32))
    provider.rotate()
    # The blob made under v1 claims to be v2: the v2 key (and the AAD's version) reject it.
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(2, old.blob))


def test_unknown_version_is_key_unavailable(provider: KeyProvider) -> None:
    wrapped = provider.wrap(secrets.token_bytes(32))
    with pytest.raises(KeyUnavailable):
        provider.unwrap(WrappedKey(99, wrapped.blob))


def test_rotate_then_retire(provider: KeyProvider) -> None:
    dek = secrets.token_bytes(32)
    old = provider.wrap(dek, b"s")
    assert provider.rotate() == 2
    assert provider.current_version == 2
    new = provider.wrap(dek, b"s")
    assert new.version == 2
    assert provider.unwrap(old, b"s") == dek  # old versions stay usable until retired
    with pytest.raises(KeyUnavailable, match="current"):
        provider.retire(2)
    provider.retire(1)
    with pytest.raises(KeyUnavailable, match="retired"):
        provider.unwrap(old, b"s")
    assert provider.unwrap(new, b"s") == dek
    assert [(v.version, v.state) for v in provider.versions()] == [(1, "retired"), (2, "current")]
    with pytest.raises(KeyUnavailable):
        provider.retire(1)
    # A retired version number is never reused.
    assert provider.rotate() == 3


def test_retire_unknown_version_refused(provider: KeyProvider) -> None:
    with pytest.raises(KeyUnavailable, match="unknown"):
        provider.retire(7)


def test_erasure_store_create_get_destroy(provider: KeyProvider) -> None:
    store = provider.erasure
    made = store.create_many(["a", "b", "c"])
    assert {len(v) for v in made.values()} == {32}
    assert len(set(made.values())) == 3
    assert store.get_many(["a", "c", "zzz"]) == {"a": made["a"], "c": made["c"]}
    assert store.destroy("b") is True
    assert store.destroy("b") is False
    assert store.get_many(["b"]) == {}
    assert sorted(store.refs()) == ["a", "c"]
    assert store.count() == 2
    with pytest.raises(IntegrityError):
        store.create_many(["a"])
