"""The erasure store: one secret per subject, kept with the keys and destroyed by a shred.

It is a small SQLite file in the keyring directory (mode 0600), separate from the vault's
database on purpose: a copy of the database alone never holds what is needed to open a
shredded subject's values. ``secure_delete`` makes SQLite overwrite a destroyed secret in
the file instead of merely unlinking its page; the rollback journal (not WAL) keeps no
long-lived copy of old pages. What the disk itself keeps after an overwrite (SSD wear
levelling, filesystem snapshots) is outside what software can promise.

Why a per-subject secret in a separate store, and not the alternatives:

* KEK rotation on every shred: the old database copy would still open under the old KEK
  unless it is destroyed, and rewrapping every subject per shred does not scale.
* Per-bucket keys replaced on each shred (rewrapping the bucket's other subjects): makes old
  copies useless too, but also makes every earlier backup lose whole buckets of *living*
  subjects after each shred. With a per-subject secret a restored backup still opens for
  everyone who was not shredded (the test suite checks both sides).
* One HSM object per subject: HSMs hold thousands of objects, not millions. With PKCS#11
  the secrets are instead sealed in this file by an AES-GCM key that never leaves the token.

Limits: the store is a file in the home's keyring, so processes sharing a PostgreSQL
database must share that keyring directory (as they must share the local KEK files). A key
backup taken before a shred, together with a database backup, still opens the shredded
subject: shredding reaches every copy of the *database*, and key backups must be kept and
expired as the custodian's key policy says.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from bastion.errors import IntegrityError, KeyUnavailable
from bastion.keys.provider import ERASURE_SECRET_BYTES

FILE_NAME = "erasure.db"
_CHUNK = 500


class SecretSealer(Protocol):
    """Protects secrets at rest in the store: identity for the local keyring, the HSM otherwise."""

    def seal(self, secret: bytes, ref: str) -> bytes: ...

    def open(self, blob: bytes, ref: str) -> bytes: ...


class PlainSealer:
    """The local keyring keeps its secrets as it keeps its KEKs: in 0600 files it alone reads."""

    def seal(self, secret: bytes, ref: str) -> bytes:
        return secret

    def open(self, blob: bytes, ref: str) -> bytes:
        if len(blob) != ERASURE_SECRET_BYTES:
            raise IntegrityError("an erasure secret in the keyring has the wrong length")
        return blob


def ensure_store_file(keys_dir: Path) -> None:
    """Create the store file in `keys_dir`, if absent, with mode 0600 before SQLite touches it."""
    path = keys_dir / FILE_NAME
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteErasureStore:
    """The store file, opened on first use. ``guard`` (the provider's ``revalidate``) runs
    before every use, so a revoked keyring releases no secret from a connection that is
    still open on a file someone removed; ``file_problem`` is what it checks here."""

    def __init__(
        self,
        path: Path,
        sealer: SecretSealer,
        *,
        guard: Callable[[], object] | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if not path.is_file():
            raise KeyUnavailable(f"erasure store {path} is missing; the keyring is incomplete")
        self.path = path
        self._sealer = sealer
        self._guard = guard
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        with self._lock:
            self._open()

    def _open(self) -> sqlite3.Connection:
        """The connection, opened if it is not (holds the lock)."""
        if self._conn is not None:
            return self._conn
        path = self.path
        if not path.is_file():
            raise KeyUnavailable(f"erasure store {path} is missing; the keyring is incomplete")
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=self._busy_timeout_s, check_same_thread=False
            )
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS erasure_secrets (ref TEXT PRIMARY KEY, secret BLOB)"
            )
            st = path.stat()
        except (sqlite3.Error, OSError) as exc:
            raise KeyUnavailable(f"cannot open erasure store {path}: {exc}") from None
        self._conn, self._identity = conn, (st.st_dev, st.st_ino)
        return conn

    def _guarded(self) -> None:
        if self._guard is not None:
            self._guard()

    def file_problem(self) -> str | None:
        """Why the store file can no longer be used (removed, unreadable), or None. A file
        replaced by another (a restore) is reopened on next use rather than refused."""
        path = self.path
        try:
            st = path.stat()
        except OSError:
            return f"erasure store {path} was removed"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"erasure store {path} is no longer readable"
        with self._lock:
            if self._identity is not None and self._identity != (st.st_dev, st.st_ino):
                self._drop()
        return None

    def drop(self) -> None:
        """Close the connection (the provider's keys were revoked); reopened on next use."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn, self._identity = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def create_many(self, refs: Iterable[str]) -> dict[str, bytes]:
        made = {ref: secrets.token_bytes(ERASURE_SECRET_BYTES) for ref in refs}
        if not made:
            return made
        rows = [(ref, self._sealer.seal(secret, ref)) for ref, secret in made.items()]
        self._guarded()
        with self._lock:
            conn = self._open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT INTO erasure_secrets VALUES (?, ?)", rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                raise IntegrityError("an erasure secret already exists for a new subject") from None
            except sqlite3.Error as exc:
                raise KeyUnavailable(f"erasure store {self.path}: {exc}") from None
        return made

    def get_many(self, refs: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(refs))
        found: dict[str, bytes] = {}
        self._guarded()
        with self._lock:
            conn = self._open()
            try:
                for i in range(0, len(wanted), _CHUNK):
                    chunk = wanted[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for ref, blob in conn.execute(
                        f"SELECT ref, secret FROM erasure_secrets WHERE ref IN ({marks})", chunk
                    ):
                        found[ref] = blob
            except sqlite3.Error as exc:
                raise KeyUnavailable(f"erasure store {self.path}: {exc}") from None
        return {ref: self._sealer.open(bytes(blob), ref) for ref, blob in found.items()}

    def destroy(self, ref: str) -> bool:
        # Not guarded: destroying a secret must work even while the keys are revoked.
        with self._lock:
            try:
                cur = self._open().execute("DELETE FROM erasure_secrets WHERE ref = ?", (ref,))
            except sqlite3.Error as exc:
                raise KeyUnavailable(f"erasure store {self.path}: {exc}") from None
            return cur.rowcount > 0

    def refs(self) -> list[str]:
        with self._lock:
            return [r for (r,) in self._open().execute("SELECT ref FROM erasure_secrets")]

    def count(self) -> int:
        with self._lock:
            row = self._open().execute("SELECT COUNT(*) FROM erasure_secrets").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.drop()
