"""Ed25519 PEM key files: written once (0600, never overwritten), read back or refused clearly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import KeyUnavailable
from bastion.keys.signing import (
    create_signing_key,
    load_or_create_signing_key,
    load_signing_key,
    read_key_pem,
    write_new_key_pem,
)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_written_key_reads_back_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = write_new_key_pem(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _raw(read_key_pem(path, "test key")) == _raw(key)
    with pytest.raises(FileExistsError):
        write_new_key_pem(path)
    assert _raw(read_key_pem(path, "test key")) == _raw(key)


def test_signing_keys_by_name(tmp_path: Path) -> None:
    key = create_signing_key(tmp_path, "log")
    assert _raw(load_signing_key(tmp_path, "log")) == _raw(key)
    assert _raw(load_or_create_signing_key(tmp_path, "log")) == _raw(key)
    with pytest.raises(KeyUnavailable, match="invalid signing key name"):
        load_signing_key(tmp_path, "../log")


def test_unusable_key_files_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match=r"^test key not found$"):
        read_key_pem(tmp_path / "absent.pem", "test key")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(KeyUnavailable, match="not an unencrypted PEM private key"):
        read_key_pem(junk, "test key")
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(KeyUnavailable, match="not an unencrypted PEM private key"):
        read_key_pem(encrypted, "test key")
    ec = tmp_path / "ec.pem"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyUnavailable, match="not an Ed25519 key"):
        read_key_pem(ec, "test key")
    # load_or_create never replaces a key file that exists but cannot be read.
    (tmp_path / "log.ed25519.pem").write_text("garbage")
    with pytest.raises(KeyUnavailable, match="signing key 'log'"):
        load_or_create_signing_key(tmp_path, "log")
