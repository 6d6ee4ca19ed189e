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

from bastion.store import Cursor
from bastion.vault.identity import VaultIdentity
from bastion.vault.schema import select_in

_INSERT = "INSERT INTO vault_pseudonyms (idx, token, owner) VALUES (?, ?, ?)"


def new_token() -> str:
    """A pseudonym: 120 random bits, so it says nothing about the value it stands for."""
    return "ps_" + base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()


class Pseudonyms:
    def __init__(self, identity: VaultIdentity, dialect: str) -> None:
        self._identity = identity
        self._dialect = dialect

    def lookup(self, cur: Cursor, values: Sequence[str]) -> dict[str, tuple[str, str]]:
        """value -> (token, owner token) for the values that already have a mapping."""
        by_idx = {self._identity.index(v): v for v in values}
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
            found = self.lookup(cur, fresh)
            inserts, reowned = [], []
            for subject in fresh:
                if subject in found:
                    token, owner = found[subject]
                    if owner != token:
                        # First seen as someone else's identifier; a subject owns its own id.
                        reowned.append((token, self._identity.index(subject)))
                else:
                    token = new_token()
                    inserts.append((self._identity.index(subject), token, token))
                tokens[subject] = token
            if inserts:
                cur.executemany(_INSERT, inserts)
            if reowned:
                cur.executemany("UPDATE vault_pseudonyms SET owner = ? WHERE idx = ?", reowned)
            created += len(inserts)
        rest = [v for v in others if v not in tokens]
        if rest:
            found = self.lookup(cur, rest)
            inserts = []
            for value in rest:
                if value in found:
                    tokens[value] = found[value][0]
                else:
                    token = new_token()
                    inserts.append((self._identity.index(value), token, tokens[others[value]]))
                    tokens[value] = token
            if inserts:
                cur.executemany(_INSERT, inserts)
            created += len(inserts)
        return created
