"""What the vault holds about one subject, found without decrypting anything.

For the subject's rights (``gateway/subject_rights.py``): the records to export, in every
dataset, and what a shred of the subject will report, read *before* the shred so that a
deletion receipt can still be written after a crash between the shred and its ledger entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bastion.vault.vault import Vault


@dataclass(frozen=True)
class SubjectHoldings:
    """A subject's pseudonymous token (None: the vault holds nothing about them) and the keys
    of their records, by dataset, in key order."""

    token: str | None
    records: dict[str, list[str]]

    @property
    def count(self) -> int:
        return sum(map(len, self.records.values()))


def subject_holdings(vault: Vault, subject: str) -> SubjectHoldings:
    """Every record about ``subject`` (via the pseudonym index and ``vault_records.subject``)."""
    token = vault.pseudonym_of(subject)
    if token is None:
        return SubjectHoldings(None, {})
    records: dict[str, list[str]] = {}
    for dataset, key in vault.db.query(
        "SELECT dataset, record_key FROM vault_records WHERE subject = ? "
        "ORDER BY dataset, record_key",
        (token,),
    ):
        records.setdefault(str(dataset), []).append(str(key))
    # Catalog order, so an export reads the same whatever the database returns first.
    order = {name: i for i, name in enumerate(vault.catalog.names)}
    return SubjectHoldings(token, dict(sorted(records.items(), key=lambda kv: order[kv[0]])))


@dataclass(frozen=True)
class ShredPreview:
    """What :meth:`Vault.shred` of a subject will put in its deletion receipt."""

    key_id: str
    records: int
    pseudonyms: int

    def to_json(self) -> str:
        return json.dumps(
            {"key_id": self.key_id, "records": self.records, "pseudonyms": self.pseudonyms}
        )

    @classmethod
    def from_json(cls, text: str) -> ShredPreview:
        doc = json.loads(text)
        return cls(str(doc["key_id"]), int(doc["records"]), int(doc["pseudonyms"]))


def shred_preview(vault: Vault, subject: str) -> ShredPreview | None:
    """The receipt's key id and counts, or None if the subject has no data key (never
    stored, or already shredded)."""
    token = vault.pseudonym_of(subject)
    if token is None:
        return None
    rows = vault.db.query(
        "SELECT dek_version, records, "
        "(SELECT COUNT(*) FROM vault_pseudonyms WHERE owner = ?) FROM vault_subjects "
        "WHERE token = ?",
        (token, token),
    )
    if not rows:
        return None
    dek_version, records, pseudonyms = (int(v) for v in rows[0])
    # The same key id Vault.shred names (a fingerprint that reveals neither subject nor token).
    key_id = f"subject-dek:{vault.identity.key_fingerprint(token)}/v{dek_version}"
    return ShredPreview(key_id, records, pseudonyms)


def was_erased(vault: Vault, subject: str) -> bool:
    """Whether ``subject`` was shredded (the vault keeps their keyed hash for that)."""
    rows = vault.db.query(
        "SELECT 1 FROM vault_erased WHERE subject_hash = ?", (vault.subject_hash(subject),)
    )
    return bool(rows)
