"""The local keyring, the default provider: KEK versions as 0600 files under BASTION_HOME/keys.

Layout::

    keys/kek-v000001.key       32 random bytes, AES-256-GCM key-encryption key, version 1
    keys/kek-v000001.retired   marker left when version 1 was destroyed
    keys/erasure.db            per-subject erasure secrets (see erasure.py)

Wrapping is AES-256-GCM from ``cryptography`` with a random 96-bit nonce; the blob is
``nonce || ciphertext || tag`` and the AEAD authenticates the KEK version and the owner.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.clock import Clock
from bastion.errors import IntegrityError, KeyUnavailable
from bastion.keys.erasure import FILE_NAME, PlainSealer, SqliteErasureStore, ensure_store_file
from bastion.keys.provider import (
    KeyVersion,
    Revalidation,
    WrappedKey,
    check_retirable,
    kek_aad,
    newest_active,
    version_states,
)

_KEK_FILE = re.compile(r"^kek-v(\d{6})\.(key|retired)$")
_NONCE = 12


def _kek_path(keys_dir: Path, version: int, suffix: str = "key") -> Path:
    return keys_dir / f"kek-v{version:06d}.{suffix}"


def _write_new_key(path: Path) -> None:
    """O_EXCL: two processes rotating at once can never overwrite each other's key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())


def _read_key(path: Path) -> bytes:
    """A KEK file's 32 bytes, refused if others may read it. OSError if it cannot be read."""
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyUnavailable(
            f"key file {path.name} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):o}); refusing to use it"
        )
    material = path.read_bytes()
    if len(material) != 32:
        raise KeyUnavailable(f"key file {path.name} is not a 256-bit key")
    return material


class LocalKeyring:
    """KEKs read from their files, kept in memory, and re-validated against the files at
    least every ``revocation_check_s`` (see :meth:`revalidate`): removing the key files or
    the erasure store, or making them unreadable, revokes the keyring."""

    def __init__(
        self,
        keys_dir: Path,
        *,
        clock: Clock | None = None,
        revocation_check_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.keys_dir = keys_dir
        self._lock = threading.Lock()
        self._aeads: dict[int, tuple[AESGCM, bytes]] = {}  # version -> (AEAD, key material)
        self._active: list[int] = []
        self._retired: list[int] = []
        if not keys_dir.is_dir():
            raise KeyUnavailable(f"keyring {keys_dir} does not exist; run `bastion init`")
        self.refresh()
        if not self._active:
            raise KeyUnavailable(f"keyring {keys_dir} holds no key-encryption key")
        self._checks = Revalidation(self._validate, clock, revocation_check_s)
        self._erasure = SqliteErasureStore(
            keys_dir / FILE_NAME,
            PlainSealer(),
            guard=self.revalidate,
            busy_timeout_s=busy_timeout_s,
        )

    @classmethod
    def create(
        cls,
        keys_dir: Path,
        *,
        clock: Clock | None = None,
        revocation_check_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> LocalKeyring:
        """Create the keyring (idempotent): the directory, KEK version 1, the erasure store."""
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        has_kek = any(_KEK_FILE.match(p.name) for p in keys_dir.iterdir())
        if not has_kek:
            _write_new_key(_kek_path(keys_dir, 1))
        ensure_store_file(keys_dir)
        return cls(
            keys_dir,
            clock=clock,
            revocation_check_s=revocation_check_s,
            busy_timeout_s=busy_timeout_s,
        )

    def revalidate(self) -> int:
        return self._checks.check()

    def _validate(self) -> str | None:
        """Are the keys held in memory still the files' (see ``KeyProvider.revalidate``)?

        Revoked, with every cache dropped, when: the keyring cannot be read; it holds no
        active KEK; a KEK held in memory was removed (without a retirement marker), became
        unreadable or changed; or the erasure store was removed or became unreadable.
        """
        problem: str | None = None
        with self._lock:
            held = dict(self._aeads)
        try:
            self.refresh()
        except KeyUnavailable as exc:
            problem = str(exc)
        with self._lock:
            active, retired = list(self._active), set(self._retired)
        if problem is None and not active:
            problem = f"keyring {self.keys_dir} holds no key-encryption key any more"
        for version, (_, material) in held.items():
            if problem is not None:
                break
            if version in retired:
                continue  # retired meanwhile (``retire`` leaves a marker): not a revocation
            try:
                if not hmac.compare_digest(_read_key(_kek_path(self.keys_dir, version)), material):
                    problem = f"key-encryption key version {version} was replaced"
            except (OSError, KeyUnavailable):
                problem = f"key-encryption key version {version} was removed or is unreadable"
        if problem is None:
            problem = self._erasure.file_problem()
        if problem is not None:
            self._drop_caches()
            return f"the keyring was revoked: {problem}"
        return None

    def _drop_caches(self) -> None:
        with self._lock:
            self._aeads.clear()
        self._erasure.drop()
        self._checks.dropped()

    @property
    def name(self) -> str:
        return f"local:{self.keys_dir}"

    @property
    def erasure(self) -> SqliteErasureStore:
        return self._erasure

    @property
    def current_version(self) -> int:
        with self._lock:
            return newest_active(self._active, "keyring")

    def refresh(self) -> None:
        active: list[int] = []
        retired: list[int] = []
        try:
            names = [p.name for p in self.keys_dir.iterdir()]
        except OSError as exc:
            raise KeyUnavailable(f"cannot read keyring {self.keys_dir}: {exc.strerror}") from None
        for name in names:
            m = _KEK_FILE.match(name)
            if m:
                (active if m.group(2) == "key" else retired).append(int(m.group(1)))
        with self._lock:
            self._active = sorted(set(active) - set(retired))
            self._retired = sorted(set(retired))
            for gone in set(self._aeads) - set(self._active):
                del self._aeads[gone]

    def _aead(self, version: int) -> AESGCM:
        self._checks.check()
        with self._lock:
            held = self._aeads.get(version)
            retired = version in self._retired
        if held is not None:
            return held[0]
        if retired:
            raise KeyUnavailable(f"key-encryption key version {version} was retired")
        path = _kek_path(self.keys_dir, version)
        try:
            material = _read_key(path)
        except FileNotFoundError:
            if _kek_path(self.keys_dir, version, "retired").exists():
                raise KeyUnavailable(f"key-encryption key version {version} was retired") from None
            raise KeyUnavailable(
                f"key-encryption key version {version} is missing from {self.keys_dir}"
            ) from None
        except OSError as exc:
            raise KeyUnavailable(f"cannot read key file {path.name}: {exc.strerror}") from None
        aead = AESGCM(material)
        with self._lock:
            self._aeads[version] = (aead, material)
        return aead

    def wrap(self, dek: bytes, aad: bytes = b"") -> WrappedKey:
        version = self.current_version
        nonce = secrets.token_bytes(_NONCE)
        blob = nonce + self._aead(version).encrypt(nonce, dek, kek_aad(version, aad))
        return WrappedKey(version, blob)

    def unwrap(self, wrapped: WrappedKey, aad: bytes = b"") -> bytes:
        aead = self._aead(wrapped.version)
        blob = wrapped.blob
        if len(blob) < _NONCE + 16:
            raise IntegrityError("wrapped key is truncated")
        try:
            return aead.decrypt(blob[:_NONCE], blob[_NONCE:], kek_aad(wrapped.version, aad))
        except InvalidTag:
            raise IntegrityError(
                f"wrapped key failed authentication under KEK version {wrapped.version}"
            ) from None

    def rotate(self) -> int:
        self.refresh()
        version = max([*self._active, *self._retired, 0]) + 1
        while True:
            try:
                _write_new_key(_kek_path(self.keys_dir, version))
                break
            except FileExistsError:
                version += 1  # another process rotated at the same moment
        self.refresh()
        return version

    def retire(self, version: int) -> None:
        self.refresh()
        check_retirable(version, self._active, self._retired)
        path = _kek_path(self.keys_dir, version)
        # The marker first: a gateway re-validating its keys meanwhile sees a retirement, not
        # a key file that changed under it (which would revoke the whole keyring).
        marker = _kek_path(self.keys_dir, version, "retired")
        marker.touch(mode=0o600)
        # Overwrite before unlinking so the bytes do not linger in a freed block of the file.
        with open(path, "r+b") as fh:
            fh.write(b"\x00" * 32)
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
        self.refresh()

    def versions(self) -> list[KeyVersion]:
        self.refresh()
        return version_states(self._active, self._retired)

    def close(self) -> None:
        self._erasure.close()
