"""Choose and open the key provider a home is configured for."""

from __future__ import annotations

from bastion.home import Home
from bastion.keys.local import LocalKeyring
from bastion.keys.provider import KeyProvider


def create_key_provider(home: Home) -> KeyProvider:
    """Create the provider's keys for a new home (idempotent) and open it."""
    s = home.settings
    if s.key_provider == "pkcs11":
        from bastion.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider.create(
            s.pkcs11.library, s.pkcs11.token_label, s.pkcs11.pin, home.keyring_dir
        )
    return LocalKeyring.create(home.keyring_dir)


def open_key_provider(home: Home) -> KeyProvider:
    """Open the configured provider. Anything missing or unreachable is KeyUnavailable."""
    s = home.settings
    if s.key_provider == "pkcs11":
        from bastion.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider(
            s.pkcs11.library, s.pkcs11.token_label, s.pkcs11.pin, home.keyring_dir
        )
    return LocalKeyring(home.keyring_dir)
