"""The vault's identity secret and the keyed hashes derived from it.

One 256-bit secret, wrapped by the KEK like a data key and stored in ``vault_secrets``.
HKDF derives from it the pseudonym index key (HMAC-SHA256 of identifying values), the
receipt key (the keyed subject hash a deletion receipt carries instead of the subject id)
and the egress token key (each flow's tokens are keyed by a sub-key of it, ``egress/tokens``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, hmac

from bastion.errors import KeyUnavailable
from bastion.keys.provider import KeyProvider, WrappedKey
from bastion.store import Cursor, Database
from bastion.vault import codec

IDENTITY_SECRET = "identity"
_INDEX_LABEL = b"bastion/pseudonym/v1\x00"


def secret_aad(name: str) -> bytes:
    return b"bastion/vault-secret/v1\x00" + name.encode()


def ensure_identity(cur: Cursor, provider: KeyProvider) -> None:
    """Create the identity secret if this database has none."""
    row = cur.execute("SELECT 1 FROM vault_secrets WHERE name = ?", (IDENTITY_SECRET,)).fetchone()
    if row is None:
        wrapped = provider.wrap(secrets.token_bytes(32), secret_aad(IDENTITY_SECRET))
        cur.execute(
            "INSERT INTO vault_secrets (name, kek_version, wrapped) VALUES (?, ?, ?)",
            (IDENTITY_SECRET, wrapped.version, wrapped.blob),
        )


class VaultIdentity:
    """Loads the identity secret (outside any open transaction) and hashes with it.

    The keys derived from it are held while the provider's key epoch stays the same: every
    use re-validates the provider (a timestamp compare, mostly), and a revocation, which
    drops the provider's caches, drops these too. They are then derived again from the
    wrapped secret read the first time, which needs the provider (and fails while the keys
    are revoked) but not the database: a use inside a transaction stays possible.
    """

    def __init__(self, db: Database, provider: KeyProvider) -> None:
        self._db = db
        self._provider = provider
        self._lock = threading.Lock()
        self._keys: tuple[hmac.HMAC, bytes, bytes] | None = None
        self._epoch = -1
        self._wrapped: WrappedKey | None = None  # as stored: no secret without the KEK

    def load(self) -> tuple[hmac.HMAC, bytes, bytes]:
        try:
            epoch = self._provider.revalidate()
        except KeyUnavailable:
            with self._lock:
                self._keys = None
            raise
        with self._lock:
            if self._keys is not None and self._epoch == epoch:
                return self._keys
            self._keys = None
            wrapped = self._wrapped
        secret: bytes | None = None
        if wrapped is not None:
            try:
                secret = self._provider.unwrap(wrapped, secret_aad(IDENTITY_SECRET))
            except KeyUnavailable:
                # Its KEK was retired since (after a rotation rewrapped it): read it again.
                # Any other reason (revoked, the HSM away) is the answer.
                live = [v.version for v in self._provider.versions() if v.state != "retired"]
                if wrapped.version in live:
                    raise
        if secret is None:
            wrapped = self._read()
            secret = self._provider.unwrap(wrapped, secret_aad(IDENTITY_SECRET))
        keys = (
            hmac.HMAC(codec.derive_vault_key(secret, "pseudonym-index"), hashes.SHA256()),
            codec.derive_vault_key(secret, "receipt-subject-hash"),
            codec.derive_vault_key(secret, "egress-token"),
        )
        with self._lock:
            self._keys, self._epoch, self._wrapped = keys, epoch, wrapped
        return keys

    def _read(self) -> WrappedKey:
        rows = self._db.query(
            "SELECT kek_version, wrapped FROM vault_secrets WHERE name = ?", (IDENTITY_SECRET,)
        )
        if not rows:
            raise KeyUnavailable("the vault's identity secret is missing; run `bastion init`")
        version, blob = rows[0]
        return WrappedKey(int(version), bytes(blob))

    def index(self, value: str) -> str:
        """HMAC-SHA256 index of an identifying value: finds its token without storing it."""
        h = self.load()[0].copy()
        h.update(_INDEX_LABEL + value.encode())
        return h.finalize().hex()

    def index_many(self, values: Sequence[str]) -> list[str]:
        """:meth:`index` of each value, with the key looked up once."""
        base = self.load()[0]
        out: list[str] = []
        add = out.append
        for value in values:
            h = base.copy()
            h.update(_INDEX_LABEL + value.encode())
            add(h.finalize().hex())
        return out

    def _receipt_hmac(self, label: bytes, value: str) -> str:
        h = hmac.HMAC(self.load()[1], hashes.SHA256())
        h.update(label + value.encode())
        return h.finalize().hex()

    def subject_hash(self, subject: str) -> str:
        """Keyed hash of a subject id for receipts: the custodian can match it, others cannot."""
        return "hmac-sha256:" + self._receipt_hmac(b"bastion/subject/v1\x00", subject)

    def egress_token_key(self, scope: str) -> bytes:
        """The key of one token scope of egress (a flow, or flows declared joinable): tokens
        of two scopes cannot be matched without these keys, which never leave the vault."""
        return codec.derive_vault_key(self.load()[2], "egress-token-scope/" + scope)

    def key_fingerprint(self, token: str) -> str:
        """A stable name for a subject's data key that reveals neither the subject nor its token."""
        return self._receipt_hmac(b"bastion/key-id/v1\x00", token)[:32]
