"""Key providers: key-encryption keys (local keyring or PKCS#11 HSM) and signing keys.

``KeyProvider`` is the one interface (``provider.py``); ``LocalKeyring`` (``local.py``) and
``Pkcs11Provider`` (``pkcs11.py``, imported lazily: it loads a native library) implement it.
``create_key_provider`` / ``open_key_provider`` pick the one a home is configured for.
"""

from bastion.keys.factory import create_key_provider, open_key_provider
from bastion.keys.local import LocalKeyring
from bastion.keys.provider import ErasureStore, KeyProvider, KeyVersion, WrappedKey

__all__ = [
    "ErasureStore",
    "KeyProvider",
    "KeyVersion",
    "LocalKeyring",
    "WrappedKey",
    "create_key_provider",
    "open_key_provider",
]
