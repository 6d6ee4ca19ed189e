"""Flow-scoped pseudonyms: what a recipient receives instead of an identifier.

A flow's token of a value is HMAC-SHA256 under the key of the flow's *token scope* (the
flow itself, or the group of flows declared joinable, per recipient for a restricted
transaction), over the vault's own token of that value, never over the raw identifier
(which a flow never opens). So:

* two flows of different scopes give unrelated tokens for the same person, and cannot be
  joined by the recipient, unless they were declared joinable;
* no flow token equals a vault token (the prefix differs, and the HMAC is one-way);
* a shredded person's vault token is gone, so a later record of the same id gets a new
  vault token and a new flow token: nothing links back.

Keys come from the vault's identity secret (``VaultIdentity.egress_token_key``).
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Iterable

PREFIX = "ft_"
_LABEL = b"bastion/egress-token/v1\x00"
_ROW_LABEL = b"bastion/egress-row/v1\x00"
_BYTES = 16  # 128 bits: collisions are out of reach for any dataset size
_CHARS = (4 * _BYTES + 2) // 3  # unpadded base64url of _BYTES
_URLSAFE = bytes.maketrans(b"+/", b"-_")


class FlowTokens:
    """Tokens of one scope. Memoizes per instance: a run sees the same user many times."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a token scope key is 32 bytes")
        self._key = key
        self._memo: dict[str, str] = {}

    def token(self, vault_token: str) -> str:
        """The flow's token of a vault token (a pseudonymized identifier)."""
        found = self._memo.get(vault_token)
        if found is None:
            found = self._mac(_LABEL, vault_token)
            if len(self._memo) < 5_000_000:
                self._memo[vault_token] = found
        return found

    def tokens(self, values: Iterable[str | None]) -> list[str | None]:
        return [None if v is None else self.token(v) for v in values]

    def row(self, record_key: str) -> str:
        """The flow's name for a record: what a later tombstone names to delete it."""
        return self._mac(_ROW_LABEL, record_key)

    def rows(self, record_keys: Iterable[str]) -> list[str]:
        """``row`` of every key: one per record of a run (never repeated, so not memoized),
        the run's largest HMAC count, in one loop with the calls bound once."""
        key, label, mac, b64, table = self._key, _ROW_LABEL, hmac.digest, _b64, _URLSAFE
        return [
            PREFIX
            + b64(mac(key, label + k.encode(), "sha256")[:_BYTES], newline=False)[:_CHARS]
            .translate(table)
            .decode()
            for k in record_keys
        ]

    def _mac(self, label: bytes, value: str) -> str:
        digest = hmac.digest(self._key, label + value.encode(), "sha256")[:_BYTES]
        # base64url without padding (binascii and a translate table: the same text as
        # base64.urlsafe_b64encode(...).rstrip("="), in fewer steps).
        return PREFIX + _b64(digest, newline=False)[:_CHARS].translate(_URLSAFE).decode()


_b64 = binascii.b2a_base64
