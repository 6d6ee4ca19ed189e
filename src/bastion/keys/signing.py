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


def create_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    """Create a key; refuses to overwrite one that exists (that would fork identities)."""
    path = _path(keys_dir, name)
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


def load_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    path = _path(keys_dir, name)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyUnavailable(f"signing key {name!r} not found in {keys_dir}") from None
    except ValueError:
        raise KeyUnavailable(f"signing key {name!r} in {keys_dir} is unreadable") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyUnavailable(f"signing key {name!r} is not an Ed25519 key")
    return key


def load_or_create_signing_key(keys_dir: Path, name: str) -> Ed25519PrivateKey:
    try:
        return load_signing_key(keys_dir, name)
    except KeyUnavailable:
        if _path(keys_dir, name).exists():
            raise
        return create_signing_key(keys_dir, name)
