"""First answers of idempotent writes, by (principal, Idempotency-Key).

The row is inserted in the write's own commit (its side write), so a retry finds it exactly
when the write happened; ``request_sha256`` binds the key to the request it first came with.
The answer is stored as the caller serialized it (JSON text); the vault does not read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.store import Cursor, Database


@dataclass(frozen=True)
class StoredAnswer:
    request_sha256: str
    response: str


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, principal: str, key: str) -> StoredAnswer | None:
        rows = self.db.query(
            "SELECT request_sha256, response FROM vault_idempotency "
            "WHERE principal = ? AND idem_key = ?",
            (principal, key),
        )
        return StoredAnswer(str(rows[0][0]), str(rows[0][1])) if rows else None

    @staticmethod
    def insert(
        cur: Cursor, principal: str, key: str, request_sha256: str, response: str, at: str
    ) -> None:
        """Within the write's commit; a concurrent first use of the key is a unique
        violation, which rolls the write back (the caller answers with the other's answer)."""
        cur.execute(
            "INSERT INTO vault_idempotency (principal, idem_key, request_sha256, status, "
            "response, at) VALUES (?, ?, ?, 200, ?, ?)",
            (principal, key, request_sha256, response, at),
        )

    def complete(self, principal: str, key: str, response: str) -> None:
        """The first answer with its receipt (the commit could not know its index yet)."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE vault_idempotency SET response = ? WHERE principal = ? AND idem_key = ?",
                (response, principal, key),
            )
