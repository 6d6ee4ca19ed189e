"""Choose and open the key provider a home is configured for."""

from __future__ import annotations

from typing import Any

from bastion.clock import Clock
from bastion.errors import KeyUnavailable
from bastion.extras import MissingExtra, require
from bastion.home import Home
from bastion.keys.local import LocalKeyring
from bastion.keys.provider import KeyProvider


def _options(home: Home, clock: Clock | None) -> dict[str, Any]:
    """The home's bounds on how long keys held in memory are trusted, and on lock waits."""
    bounds = home.settings.bounds
    return {
        "clock": clock,
        "revocation_check_s": bounds.revocation_check_s,
        "busy_timeout_s": bounds.sqlite_busy_timeout_s,
    }


def create_key_provider(home: Home, *, clock: Clock | None = None) -> KeyProvider:
    """Create the provider's keys for a new home (idempotent) and open it."""
    s = home.settings
    if s.key_provider == "pkcs11":
        require("hsm", "the PKCS#11 key provider")
        from bastion.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider.create(
            s.pkcs11.library,
            s.pkcs11.token,
            s.pkcs11.pin,
            home.keyring_dir,
            **_options(home, clock),
        )
    return LocalKeyring.create(home.keyring_dir, **_options(home, clock))


def open_key_provider(home: Home, *, clock: Clock | None = None) -> KeyProvider:
    """Open the configured provider. Anything missing or unreachable is KeyUnavailable.

    Its keys are re-validated at least every ``[bounds] revocation_check_s`` by ``clock``
    (default: the system clock): revoking them stops every release within that bound.
    """
    s = home.settings
    if s.key_provider == "pkcs11":
        try:
            require("hsm", "the PKCS#11 key provider")
        except MissingExtra as exc:
            raise KeyUnavailable(str(exc)) from None  # fail closed, like an unplugged HSM
        from bastion.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider(
            s.pkcs11.library,
            s.pkcs11.token,
            s.pkcs11.pin,
            home.keyring_dir,
            **_options(home, clock),
        )
    return LocalKeyring(home.keyring_dir, **_options(home, clock))
