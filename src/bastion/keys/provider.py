"""The one interface every key provider implements, and the erasure store behind crypto-shredding.

Two kinds of secret sit outside the database, in the provider's custody:

* **Key-encryption keys (KEKs)**, versioned. They wrap each subject's data key (DEK); the
  wrapped DEK is stored in the database. Rotation adds a version and rewraps the DEKs;
  retiring destroys an old version.
* **Erasure secrets**, one per subject. A subject's field key is derived from its DEK *and*
  its erasure secret, so the wrapped DEK in an old copy of the database is useless once the
  erasure secret is destroyed. This is what makes shredding reach backups of the database.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from bastion.clock import Clock, SystemClock
from bastion.errors import KeyUnavailable

KeyState = Literal["current", "active", "retired"]

DEK_BYTES = 32
ERASURE_SECRET_BYTES = 32


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped (AEAD, authenticated) under KEK ``version``."""

    version: int
    blob: bytes


@dataclass(frozen=True)
class KeyVersion:
    version: int
    state: KeyState


class ErasureStore(Protocol):
    """Per-subject secrets kept with the keys, never in the database. Destroying one shreds."""

    def create_many(self, refs: Iterable[str]) -> dict[str, bytes]:
        """Create a fresh random secret for each new ref; an existing ref is an error."""
        ...

    def get_many(self, refs: Iterable[str]) -> dict[str, bytes]:
        """The secrets of the refs that exist; destroyed or never-made refs are left out."""
        ...

    def destroy(self, ref: str) -> bool:
        """Destroy a ref's secret for good. True if it existed."""
        ...

    def refs(self) -> list[str]:
        """Every ref that has a secret (for sweeping orphans)."""
        ...

    def count(self) -> int: ...


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under versioned KEKs that it alone holds.

    Every failure to reach a key (missing, retired, HSM down, wrong PIN) raises
    ``KeyUnavailable``; every failed authentication of a wrapped key raises ``IntegrityError``.
    """

    @property
    def name(self) -> str:
        """Provider kind and location, without secrets, e.g. ``local:/home/keys``."""
        ...

    @property
    def current_version(self) -> int: ...

    @property
    def erasure(self) -> ErasureStore: ...

    def wrap(self, dek: bytes, aad: bytes = b"") -> WrappedKey:
        """Wrap under the current KEK. ``aad`` binds the wrapped key to its owner."""
        ...

    def unwrap(self, wrapped: WrappedKey, aad: bytes = b"") -> bytes: ...

    def rotate(self) -> int:
        """Create a new KEK version and make it current. Returns the new version."""
        ...

    def retire(self, version: int) -> None:
        """Destroy an old KEK version. Refuses the current one."""
        ...

    def versions(self) -> list[KeyVersion]: ...

    def refresh(self) -> None:
        """Re-read which versions exist (another process may have rotated)."""
        ...

    def revalidate(self) -> int:
        """Check the key material held in memory against the provider, at most every
        ``revocation_check_s`` (a timestamp compare otherwise): if the keys were revoked
        (key files removed or unreadable, HSM key destroyed or token gone), every cache is
        dropped and this and every later use raise ``KeyUnavailable`` until they are back.

        Returns the key epoch: it changes whenever caches were dropped, so that holders of
        keys derived from the provider's (the vault's identity keys) drop theirs too.
        """
        ...

    def close(self) -> None: ...


def kek_aad(version: int, aad: bytes) -> bytes:
    """What a KEK's AEAD authenticates: its version (no relabelling) and the owner."""
    return b"bastion/kek/v1\x00" + version.to_bytes(8, "big") + aad


def newest_active(active: Sequence[int], holder: str) -> int:
    """The current KEK version: the newest active one."""
    if not active:
        raise KeyUnavailable(f"no active key-encryption key in the {holder}")
    return active[-1]


def check_retirable(version: int, active: Sequence[int], retired: Sequence[int]) -> None:
    """Only an active KEK version that is not the current (newest) one may be retired."""
    if version not in active:
        state = "already retired" if version in retired else "unknown"
        raise KeyUnavailable(f"key-encryption key version {version} is {state}")
    if version == active[-1]:
        raise KeyUnavailable(
            f"version {version} is the current key-encryption key; rotate before retiring it"
        )


def version_states(active: Sequence[int], retired: Sequence[int]) -> list[KeyVersion]:
    """Every KEK version with its state, oldest first; the newest active version is current.

    A version in both lists (retirement marked but its key not yet destroyed) lists as active.
    """
    current = active[-1] if active else None
    out = [KeyVersion(v, "current" if v == current else "active") for v in active]
    out += [KeyVersion(v, "retired") for v in retired if v not in active]
    return sorted(out, key=lambda k: k.version)


class Revalidation:
    """When a provider's in-memory key material is next checked against the provider itself.

    ``check`` is the hot path: one clock read and two comparisons while the last check is
    younger than ``every_s``. Past that one thread runs the provider's ``validate`` (the
    others wait for it); ``validate`` returns None if the keys are there, else why not. A
    clock that went back counts as due.
    """

    def __init__(
        self, validate: Callable[[], str | None], clock: Clock | None, every_s: float
    ) -> None:
        if not every_s > 0:
            raise ValueError("revocation_check_s must be positive")
        self._validate = validate
        self._clock: Clock = clock or SystemClock()
        self._every = timedelta(seconds=every_s)
        self._checked: datetime | None = None
        self._due: datetime | None = None
        self._lock = threading.Lock()
        self._epochs = itertools.count(1)
        self.revoked: str | None = None
        self.epoch = 0

    def check(self) -> int:
        now = self._clock.now()
        due, checked = self._due, self._checked
        if due is None or checked is None or now >= due or now < checked:
            with self._lock:
                due, checked = self._due, self._checked
                if due is None or checked is None or now >= due or now < checked:
                    self.revoked = self._validate()
                    self._checked, self._due = now, now + self._every
        revoked = self.revoked
        if revoked is not None:
            raise KeyUnavailable(revoked)
        return self.epoch

    def dropped(self) -> None:
        """The provider dropped its caches: holders of derived keys must drop theirs."""
        self.epoch = next(self._epochs)

    def force(self) -> None:
        """Check at the next use, whatever the time (after a failure that hints at revocation)."""
        self._due = None
