"""PKCS#11 HSM provider (tested on SoftHSM2): KEKs are generated in the token and never leave it.

* Each KEK version is an AES-256 secret key object in the token, labelled
  ``bastion-kek-v000001``, with ``SENSITIVE=true`` and ``EXTRACTABLE=false``: the token will
  not export it, wrapped or clear.
* Wrapping a data key is ``C_Encrypt`` with ``CKM_AES_GCM`` *inside the token* (96-bit random
  nonce, 128-bit tag, the KEK version and the owner as additional authenticated data), so the
  wrapped key is authenticated, not just encrypted. We chose in-token AES-GCM over
  ``CKM_AES_KEY_WRAP`` (SoftHSM refuses it on raw data keys) and over ``CKM_AES_CBC_PAD``
  (unauthenticated: a flipped bit would unwrap to a garbage key).
* A retired version's key object is destroyed; a small data object ``...-retired`` remembers
  that the version existed, so a version number is never reused.
* The per-subject erasure secrets live in ``keys/erasure.db`` sealed by a further in-token
  AES-GCM key (``bastion-erasure-store``), so that file is useless without the HSM.

Any failure to reach the token (library missing, token absent, wrong PIN, session lost) is
``KeyUnavailable``; a failed tag check is ``IntegrityError``. Both fail closed.

A lost session (the token went away, its keys are no longer seen) is reopened on a later
use, after a backoff (0.5 s, doubling to 10 s, in real time), re-initializing the library
so a token that came back is found: the gateway needs no restart. Every
``revocation_check_s`` the provider also re-reads the token's objects: a key destroyed
meanwhile (by another process) is forgotten, and the key epoch moves so that keys derived
from it are dropped too.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11err
from pkcs11.mechanisms import GCMParams

from bastion.clock import Clock
from bastion.errors import IntegrityError, KeyUnavailable
from bastion.keys.erasure import FILE_NAME, SqliteErasureStore, ensure_store_file
from bastion.keys.provider import (
    ERASURE_SECRET_BYTES,
    KeyVersion,
    Revalidation,
    WrappedKey,
    check_retirable,
    kek_aad,
    newest_active,
    version_states,
)

LABEL_PREFIX = "bastion-kek-v"
ERASURE_LABEL = "bastion-erasure-store"
_LABEL = re.compile(r"^bastion-kek-v(\d{6})(-retired)?$")
_NONCE = 12
# Reopening a lost session: first after this long, then twice as long each time, at most.
REOPEN_FIRST_S = 0.5
REOPEN_MAX_S = 10.0

# Errors that mean "the token cannot be used right now", as opposed to "this ciphertext is bad".
_UNAVAILABLE = (
    p11err.DeviceError,
    p11err.DeviceMemory,
    p11err.DeviceRemoved,
    p11err.SessionClosed,
    p11err.SessionHandleInvalid,
    p11err.TokenNotPresent,
    p11err.TokenNotRecognised,
    p11err.UserNotLoggedIn,
    p11err.PinIncorrect,
    p11err.PinLocked,
    p11err.PinExpired,
    p11err.NoSuchToken,
    p11err.KeyHandleInvalid,
    p11err.ObjectHandleInvalid,
    p11err.OperationActive,
)

_KEY_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


def _kek_label(version: int, retired: bool = False) -> str:
    return f"{LABEL_PREFIX}{version:06d}" + ("-retired" if retired else "")


def _open_session(library: str, token_label: str, pin: str, *, reinitialize: bool = False) -> Any:
    """A logged-in session. ``reinitialize``: re-read the slots first (a token came back)."""
    try:
        lib = pkcs11.lib(library)
    except Exception:
        raise KeyUnavailable(f"cannot load the PKCS#11 library {library}") from None
    try:
        if reinitialize:
            lib.reinitialize()
        try:
            token = lib.get_token(token_label=token_label)
        except (p11err.NoSuchToken, p11err.GeneralError):
            # SoftHSM sees tokens created (or deleted) after the library was initialized only
            # after re-initializing it.
            lib.reinitialize()
            token = lib.get_token(token_label=token_label)
    except p11err.NoSuchToken:
        raise KeyUnavailable(f"PKCS#11 token {token_label!r} is not present") from None
    except p11err.PKCS11Error as exc:
        raise KeyUnavailable(f"PKCS#11 token {token_label!r}: {type(exc).__name__}") from None
    if not pin:
        raise KeyUnavailable("no PIN configured for the PKCS#11 token (BASTION_PKCS11_PIN)")
    try:
        return token.open(user_pin=pin, rw=True)
    except (p11err.PinIncorrect, p11err.PinLenRange):
        raise KeyUnavailable(f"PKCS#11 login to token {token_label!r} failed: wrong PIN") from None
    except p11err.PKCS11Error as exc:
        raise KeyUnavailable(
            f"PKCS#11 login to token {token_label!r} failed: {type(exc).__name__}"
        ) from None


class _HsmSealer:
    """Seals erasure secrets with an AES-GCM key that never leaves the token."""

    def __init__(self, provider: Pkcs11Provider) -> None:
        self._p = provider

    def seal(self, secret: bytes, ref: str) -> bytes:
        return self._p._encrypt(ERASURE_LABEL, secret, b"bastion/erasure/v1\x00" + ref.encode())

    def open(self, blob: bytes, ref: str) -> bytes:
        out = self._p._decrypt(ERASURE_LABEL, blob, b"bastion/erasure/v1\x00" + ref.encode())
        if len(out) != ERASURE_SECRET_BYTES:
            raise IntegrityError("an erasure secret has the wrong length")
        return out


class Pkcs11Provider:
    def __init__(
        self,
        library: str,
        token_label: str,
        pin: str,
        keys_dir: Path,
        *,
        clock: Clock | None = None,
        revocation_check_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.library = library
        self.token_label = token_label
        self.keys_dir = keys_dir
        self._pin = pin  # kept to reopen a lost session
        self._lock = threading.RLock()
        self._session: Any | None = _open_session(library, token_label, pin)
        self._keys: dict[str, Any] = {}
        self._active: list[int] = []
        self._retired: list[int] = []
        self._lost: str | None = None  # why the session was lost, while it is
        self._backoff = REOPEN_FIRST_S
        self._reopen_at = 0.0  # time.monotonic() of the next reopening attempt
        self._checks = Revalidation(self._validate, clock, revocation_check_s)
        self.refresh()
        if not self._active:
            self.close()
            raise KeyUnavailable(
                f"PKCS#11 token {token_label!r} holds no Bastion key-encryption key"
            )
        if ERASURE_LABEL not in self._keys:
            self.close()
            raise KeyUnavailable(f"PKCS#11 token {token_label!r} holds no erasure-store key")
        self._erasure = SqliteErasureStore(
            keys_dir / FILE_NAME,
            _HsmSealer(self),
            guard=self.revalidate,
            busy_timeout_s=busy_timeout_s,
        )

    @classmethod
    def create(
        cls, library: str, token_label: str, pin: str, keys_dir: Path, **options: Any
    ) -> Pkcs11Provider:
        """Generate KEK version 1 and the erasure-store key in the token if absent (idempotent)."""
        session = _open_session(library, token_label, pin)
        try:
            labels = {
                str(k[Attribute.LABEL])
                for k in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            }
            if not any(_LABEL.match(label) for label in labels):
                session.generate_key(
                    KeyType.AES, 256, label=_kek_label(1), store=True, template=_KEY_TEMPLATE
                )
            if ERASURE_LABEL not in labels:
                session.generate_key(
                    KeyType.AES, 256, label=ERASURE_LABEL, store=True, template=_KEY_TEMPLATE
                )
        except p11err.PKCS11Error as exc:
            raise KeyUnavailable(f"cannot create keys in the token: {type(exc).__name__}") from None
        finally:
            session.close()
        keys_dir.mkdir(parents=True, exist_ok=True)
        ensure_store_file(keys_dir)
        return cls(library, token_label, pin, keys_dir, **options)

    @property
    def name(self) -> str:
        return f"pkcs11:{self.token_label}"

    @property
    def erasure(self) -> SqliteErasureStore:
        return self._erasure

    @property
    def current_version(self) -> int:
        with self._lock:
            return newest_active(self._active, "token")

    # ---- the session: lost, reopened --------------------------------------------------------

    def _live(self) -> Any:
        """The session, reopened if it was lost and the backoff has passed. Holds the lock."""
        if self._session is not None:
            return self._session
        wait = self._reopen_at - time.monotonic()
        if wait > 0:
            raise KeyUnavailable(
                f"PKCS#11 token {self.token_label!r} unavailable ({self._lost}); "
                f"next attempt in {wait:.1f}s"
            )
        try:
            session = _open_session(self.library, self.token_label, self._pin, reinitialize=True)
        except KeyUnavailable as exc:
            self._lose(str(exc))
            raise
        self._session = session
        self._load(session)
        if not self._healthy():
            self._lose("the token holds none of Bastion's keys")
            raise KeyUnavailable(
                f"PKCS#11 token {self.token_label!r} came back without Bastion's keys"
            )
        self._lost, self._backoff = None, REOPEN_FIRST_S
        self._checks.dropped()  # new key handles
        return session

    def _lose(self, reason: str) -> None:
        """Forget the session and every key handle; reopen after the backoff. Holds the lock."""
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        self._keys = {}
        self._lost = reason
        self._reopen_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, REOPEN_MAX_S)
        self._checks.dropped()

    def _healthy(self) -> bool:
        """The session sees Bastion's keys (a token moved away shows none). Holds the lock."""
        return bool(self._active) and ERASURE_LABEL in self._keys

    def _load(self, session: Any) -> None:
        """Read the token's keys and markers into the handles and version lists."""
        try:
            keys = {
                str(k[Attribute.LABEL]): k
                for k in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            }
            markers = [
                str(o[Attribute.LABEL])
                for o in session.get_objects({Attribute.CLASS: ObjectClass.DATA})
            ]
        except p11err.PKCS11Error as exc:
            self._lose(type(exc).__name__)
            raise KeyUnavailable(f"PKCS#11 token unavailable: {type(exc).__name__}") from None
        self._keys = keys
        active: set[int] = set()
        retired: set[int] = set()
        for label in [*keys, *markers]:
            m = _LABEL.match(label)
            if m:
                (retired if m.group(2) else active).add(int(m.group(1)))
        self._active = sorted(v for v in active if _kek_label(v) in keys)
        self._retired = sorted(retired)

    def refresh(self) -> None:
        with self._lock:
            self._load(self._live())

    def revalidate(self) -> int:
        return self._checks.check()

    def _validate(self) -> str | None:
        """Re-read the token's objects: a key destroyed meanwhile loses its handle (and the
        epoch moves); a token that shows none of Bastion's keys loses the session. Either way
        each use then fails on its own (KeyUnavailable), and a token that comes back is used
        again as soon as the session is reopened, so nothing is held as revoked here."""
        with self._lock:
            held = set(self._keys)
            try:
                self.refresh()
            except KeyUnavailable:
                return None  # lost: caches dropped, reopened after the backoff
            if not self._healthy():
                self._lose("the token holds none of Bastion's keys")
            elif held - set(self._keys):
                self._checks.dropped()  # a key was destroyed: derived keys go too
        return None

    def _key(self, label: str) -> Any:
        self._checks.check()
        with self._lock:
            key = self._keys.get(label)
        if key is None:
            self.refresh()
            with self._lock:
                key = self._keys.get(label)
                if key is None and not self._healthy():
                    # A token moved away (or replaced) leaves the session open and empty.
                    self._lose("the token holds none of Bastion's keys")
        if key is None:
            m = _LABEL.match(label)
            if m and int(m.group(1)) in self._retired:
                raise KeyUnavailable(f"key-encryption key version {int(m.group(1))} was retired")
            raise KeyUnavailable(f"key {label!r} is not in PKCS#11 token {self.token_label!r}")
        return key

    def _encrypt(self, label: str, data: bytes, aad: bytes) -> bytes:
        key = self._key(label)
        nonce = secrets.token_bytes(_NONCE)
        with self._lock:
            try:
                ct = key.encrypt(
                    data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
                )
            except _UNAVAILABLE as exc:
                self._lose(type(exc).__name__)
                raise KeyUnavailable(f"PKCS#11 token unavailable: {type(exc).__name__}") from None
            except p11err.PKCS11Error as exc:
                raise KeyUnavailable(f"PKCS#11 encrypt failed: {type(exc).__name__}") from None
        return nonce + bytes(ct)

    def _decrypt(self, label: str, blob: bytes, aad: bytes) -> bytes:
        key = self._key(label)
        if len(blob) < _NONCE + 16:
            raise IntegrityError("wrapped key is truncated")
        with self._lock:
            try:
                out = key.decrypt(
                    blob[_NONCE:],
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(blob[:_NONCE], aad),
                )
            except _UNAVAILABLE as exc:
                self._lose(type(exc).__name__)
                raise KeyUnavailable(f"PKCS#11 token unavailable: {type(exc).__name__}") from None
            except p11err.PKCS11Error:
                # SoftHSM reports a failed GCM tag as CKR_GENERAL_ERROR or ENCRYPTED_DATA_INVALID.
                raise IntegrityError(
                    f"wrapped key failed authentication in the token (key {label})"
                ) from None
        return bytes(out)

    def wrap(self, dek: bytes, aad: bytes = b"") -> WrappedKey:
        version = self.current_version
        return WrappedKey(version, self._encrypt(_kek_label(version), dek, kek_aad(version, aad)))

    def unwrap(self, wrapped: WrappedKey, aad: bytes = b"") -> bytes:
        return self._decrypt(
            _kek_label(wrapped.version), wrapped.blob, kek_aad(wrapped.version, aad)
        )

    def rotate(self) -> int:
        self.refresh()
        with self._lock:
            version = max([*self._active, *self._retired, 0]) + 1
            try:
                self._live().generate_key(
                    KeyType.AES, 256, label=_kek_label(version), store=True, template=_KEY_TEMPLATE
                )
            except p11err.PKCS11Error as exc:
                raise KeyUnavailable(
                    f"cannot create a key in the token: {type(exc).__name__}"
                ) from None
        self.refresh()
        return version

    def retire(self, version: int) -> None:
        self.refresh()
        check_retirable(version, self._active, self._retired)
        key = self._key(_kek_label(version))
        with self._lock:
            try:
                self._live().create_object(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.LABEL: _kek_label(version, retired=True),
                        Attribute.VALUE: b"retired",
                    }
                )
                key.destroy()
            except p11err.PKCS11Error as exc:
                raise KeyUnavailable(f"cannot retire the key: {type(exc).__name__}") from None
        self.refresh()

    def versions(self) -> list[KeyVersion]:
        self.refresh()
        return version_states(self._active, self._retired)

    def key_attributes(self, version: int) -> dict[str, bool]:
        """The security attributes of a KEK as the token reports them (for tests and audits)."""
        key = self._key(_kek_label(version))
        with self._lock:
            return {
                "sensitive": bool(key[Attribute.SENSITIVE]),
                "extractable": bool(key[Attribute.EXTRACTABLE]),
                "never_extractable": bool(key[Attribute.NEVER_EXTRACTABLE]),
                "always_sensitive": bool(key[Attribute.ALWAYS_SENSITIVE]),
            }

    def close(self) -> None:
        with self._lock:
            erasure = getattr(self, "_erasure", None)
            if erasure is not None:
                erasure.close()
            session, self._session = self._session, None
            if session is not None:
                with contextlib.suppress(p11err.PKCS11Error):
                    session.close()
