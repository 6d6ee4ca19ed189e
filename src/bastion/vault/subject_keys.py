"""Per-subject data keys: created, unwrapped into field keys, and rewrapped on rotation."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.errors import KeyUnavailable
from bastion.keys.provider import DEK_BYTES, KeyProvider, WrappedKey
from bastion.store import Cursor, Database
from bastion.vault import codec
from bastion.vault.schema import select_in

DEK_VERSION = 1

# What sealing and opening need per subject: the field key's AEAD and the data-key version.
FieldKey = tuple[AESGCM, int]


class SubjectKeys:
    def __init__(self, provider: KeyProvider, db: Database) -> None:
        self.provider = provider
        self.db = db
        self.dialect = db.dialect

    def load(self, cur: Cursor, tokens: Sequence[str]) -> dict[str, FieldKey]:
        """Field keys of the subjects that still have a data key; shredded ones are left out."""
        rows = select_in(
            cur,
            self.dialect,
            "SELECT token, dek_version, kek_version, wrapped FROM vault_subjects WHERE {in}",
            "token",
            tokens,
        )
        erasure = self.provider.erasure.get_many(r[0] for r in rows)
        out: dict[str, FieldKey] = {}
        for token, dek_version, kek_version, wrapped in rows:
            secret = erasure.get(token)
            if secret is None:
                raise KeyUnavailable(
                    "a subject's erasure secret is missing (shredded, or this keyring is not the "
                    "one the database was written with)"
                )
            dek = self.provider.unwrap(
                WrappedKey(int(kek_version), bytes(wrapped)),
                codec.dek_aad(token, int(dek_version)),
            )
            key = codec.derive_field_key(dek, secret, token, int(dek_version))
            out[token] = (AESGCM(key), int(dek_version))
        return out

    def create(
        self,
        cur: Cursor,
        tokens: Sequence[str],
        now: str,
        records: Mapping[str, int] | None = None,
    ) -> dict[str, FieldKey]:
        """New data keys and erasure secrets. The caller destroys the secrets if it rolls back.

        ``records`` gives each new subject's starting record count (0 if left out).
        """
        if not tokens:
            return {}
        erasure = self.provider.erasure.create_many(tokens)
        out: dict[str, FieldKey] = {}
        rows = []
        for token in tokens:
            dek = secrets.token_bytes(DEK_BYTES)
            wrapped = self.provider.wrap(dek, codec.dek_aad(token, DEK_VERSION))
            count = records.get(token, 0) if records else 0
            rows.append((token, DEK_VERSION, wrapped.version, wrapped.blob, count, now))
            key = codec.derive_field_key(dek, erasure[token], token, DEK_VERSION)
            out[token] = (AESGCM(key), DEK_VERSION)
        self.db.copy_rows(
            cur,
            "vault_subjects",
            ("token", "dek_version", "kek_version", "wrapped", "records", "created_at"),
            rows,
        )
        return out

    def rewrap_batch(self, cur: Cursor, new_version: int, limit: int) -> int:
        """Rewrap up to ``limit`` data keys not yet under ``new_version``. Returns how many."""
        rows = cur.execute(
            "SELECT token, dek_version, kek_version, wrapped FROM vault_subjects "
            "WHERE kek_version <> ? ORDER BY token LIMIT ?",
            (new_version, limit),
        ).fetchall()
        updates = []
        for token, dek_version, kek_version, wrapped in rows:
            aad = codec.dek_aad(token, int(dek_version))
            dek = self.provider.unwrap(WrappedKey(int(kek_version), bytes(wrapped)), aad)
            rewrapped = self.provider.wrap(dek, aad)
            updates.append((rewrapped.version, rewrapped.blob, token, int(kek_version)))
        cur.executemany(
            "UPDATE vault_subjects SET kek_version = ?, wrapped = ? "
            "WHERE token = ? AND kek_version = ?",
            updates,
        )
        return len(rows)
