"""Local keyring specifics: file modes, refusal of unsafe or missing key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.errors import KeyUnavailable
from bastion.keys.local import LocalKeyring


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keyring_files_are_private(tmp_path: Path) -> None:
    ring = LocalKeyring.create(tmp_path / "keys")
    ring.rotate()
    assert _mode(tmp_path / "keys") == 0o700
    for f in (tmp_path / "keys").iterdir():
        if f.suffix in (".key", ".db"):
            assert _mode(f) == 0o600, f.name
    ring.close()


def test_create_is_idempotent(tmp_path: Path) -> None:
    LocalKeyring.create(tmp_path / "keys").close()
    ring = LocalKeyring.create(tmp_path / "keys")
    assert [v.version for v in ring.versions()] == [1]
    ring.close()


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    ring = LocalKeyring.create(tmp_path / "keys")
    ring.close()
    os.chmod(tmp_path / "keys" / "kek-v000001.key", 0o644)
    ring = LocalKeyring(tmp_path / "keys")
    with pytest.raises(KeyUnavailable, match="readable by others"):
        ring.wrap(b"k" * 32)
    ring.close()


def test_missing_keyring_is_key_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match="does not exist"):
        LocalKeyring(tmp_path / "nope")


def test_keyring_without_kek_is_key_unavailable(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    with pytest.raises(KeyUnavailable, match="no key-encryption key"):
        LocalKeyring(tmp_path / "keys")


def test_deleted_key_file_is_key_unavailable(tmp_path: Path) -> None:
    ring = LocalKeyring.create(tmp_path / "keys")
    wrapped = ring.wrap(b"k" * 32)
    ring.rotate()
    ring.close()
    (tmp_path / "keys" / "kek-v000001.key").unlink()
    ring = LocalKeyring(tmp_path / "keys")
    with pytest.raises(KeyUnavailable, match="missing"):
        ring.unwrap(wrapped)
    ring.close()


def test_missing_erasure_store_is_key_unavailable(tmp_path: Path) -> None:
    LocalKeyring.create(tmp_path / "keys").close()
    (tmp_path / "keys" / "erasure.db").unlink()
    with pytest.raises(KeyUnavailable, match="erasure store"):
        LocalKeyring(tmp_path / "keys")


def test_destroyed_erasure_secret_is_gone_from_the_file(tmp_path: Path) -> None:
    ring = LocalKeyring.create(tmp_path / "keys")
    secret = ring.erasure.create_many(["subject"])["subject"]
    assert secret in (tmp_path / "keys" / "erasure.db").read_bytes()
    ring.erasure.destroy("subject")
    # secure_delete overwrites the freed cell instead of leaving the bytes in a free page.
    assert secret not in (tmp_path / "keys" / "erasure.db").read_bytes()
    ring.close()


def test_rotation_in_another_process_is_seen_after_refresh(tmp_path: Path) -> None:
    a = LocalKeyring.create(tmp_path / "keys")
    b = LocalKeyring(tmp_path / "keys")
    assert b.rotate() == 2
    wrapped = b.wrap(b"k" * 32)
    assert a.unwrap(wrapped) == b"k" * 32  # an unknown version triggers a re-read
    a.refresh()
    assert a.current_version == 2
    a.close()
    b.close()
