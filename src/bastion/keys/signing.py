"""Ed25519 signing keys kept in the local keyring (mode 0600): log, issuer, custodian."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import KeyUnavailable


def _path(keys_dir: Path, name: str) -> Path:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise KeyUnavailable(f"invalid signing key name {name!r}")
    return keys_dir / f"{name}.ed25519.pem"


def write_new_key_pem(path: Path) -> Ed25519PrivateKey:
    """A fresh Ed25519 key written to `path` as unencrypted PKCS#8 PEM, mode 0600.

    Raises FileExistsError rather than overwrite a key (that would fork an identity).
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def read_key_pem(path: Path, what: str) -> Ed25519PrivateKey:
    """The Ed25519 key in an unencrypted PEM file; KeyUnavailable, naming it `what`, if not."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyUnavailable(f"{what} not found") from None
    except (ValueError, TypeError):  # TypeError: the PEM is encrypted
        raise KeyUnavailable(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyUnavailable(f"{what} is not an Ed25519 key")
    return key


def create_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    """Create a key; refuses to overwrite one that exists (that would fork identities)."""
    return write_new_key_pem(_path(keys_dir, name))


def load_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    return read_key_pem(_path(keys_dir, name), f"signing key {name!r} in {keys_dir}")


def load_or_create_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    try:
        return load_signing_key(keys_dir, name)
    except KeyUnavailable:
        if _path(keys_dir, name).exists():
            raise
        return create_signing_key(keys_dir, name)
