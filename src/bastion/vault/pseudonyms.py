"""Pseudonyms: a random token per identifying value, found again through a keyed HMAC index.

Tokens are random, not derived from the value, so the mapping table is the only link from a
token back to a person: deleting a subject's rows (a shred) cuts that link for good in the
live system, and the same id ingested later gets a new, unlinkable token. A mapping is owned
by a subject: the subject's own id always, and otherwise the subject of the first record the
value appeared in (a device id, for instance).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence

from bastion.store import Cursor, Database
from bastion.vault.identity import VaultIdentity
from bastion.vault.schema import select_in

_COLUMNS = ("idx", "token", "owner")


_TOKEN_BYTES = 15  # 120 bits; a multiple of 3, so each token is exactly 20 base64 characters
_TOKEN_CHARS = 20


def new_token() -> str:
    """A pseudonym: 120 random bits, so it says nothing about the value it stands for."""
    return "ps_" + base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).decode()


def new_tokens(n: int) -> list[str]:
    """``n`` pseudonyms, each with its own 120 random bits, from one call to the OS RNG.

    15-byte groups line up with base64's 3-byte blocks, so encoding the whole buffer once
    and cutting it every 20 characters gives exactly each group's own encoding.
    """
    text = base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES * n)).decode()
    return ["ps_" + text[i : i + _TOKEN_CHARS] for i in range(0, _TOKEN_CHARS * n, _TOKEN_CHARS)]


class Pseudonyms:
    def __init__(self, identity: VaultIdentity, db: Database) -> None:
        self._identity = identity
        self._db = db
        self._dialect = db.dialect

    def lookup(self, cur: Cursor, values: Sequence[str]) -> dict[str, tuple[str, str]]:
        """value -> (token, owner token) for the values that already have a mapping."""
        return self._lookup(cur, dict(zip(self._identity.index_many(values), values, strict=True)))

    def _lookup(self, cur: Cursor, by_idx: dict[str, str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for idx, token, owner in select_in(
            cur,
            self._dialect,
            "SELECT idx, token, owner FROM vault_pseudonyms WHERE {in}",
            "idx",
            list(by_idx),
        ):
            found[by_idx[idx]] = (str(token), str(owner))
        return found

    def resolve(
        self,
        cur: Cursor,
        subjects: Sequence[str],
        others: Mapping[str, str],
        tokens: dict[str, str],
    ) -> int:
        """Give every subject id, then every other value (mapped to its owner's id), a token.

        ``tokens`` is the caller's cache (value -> token) and is filled in place. Returns how
        many new mappings were created.
        """
        created = 0
        fresh = [s for s in dict.fromkeys(subjects) if s not in tokens]
        if fresh:
            indexes = self._identity.index_many(fresh)
            found = self._lookup(cur, dict(zip(indexes, fresh, strict=True)))
            inserts, reowned = [], []
            made = iter(new_tokens(len(fresh) - len(found)))
            for subject, idx in zip(fresh, indexes, strict=True):
                if subject in found:
                    token, owner = found[subject]
                    if owner != token:
                        # First seen as someone else's identifier; a subject owns its own id.
                        reowned.append((token, idx))
                else:
                    token = next(made)
                    inserts.append((idx, token, token))
                tokens[subject] = token
            if inserts:
                self._db.copy_rows(cur, "vault_pseudonyms", _COLUMNS, inserts)
            if reowned:
                cur.executemany("UPDATE vault_pseudonyms SET owner = ? WHERE idx = ?", reowned)
            created += len(inserts)
        rest = [v for v in others if v not in tokens]
        if rest:
            indexes = self._identity.index_many(rest)
            found = self._lookup(cur, dict(zip(indexes, rest, strict=True)))
            inserts = []
            made = iter(new_tokens(len(rest) - len(found)))
            for value, idx in zip(rest, indexes, strict=True):
                if value in found:
                    tokens[value] = found[value][0]
                else:
                    token = next(made)
                    inserts.append((idx, token, tokens[others[value]]))
                    tokens[value] = token
            if inserts:
                self._db.copy_rows(cur, "vault_pseudonyms", _COLUMNS, inserts)
            created += len(inserts)
        return created
