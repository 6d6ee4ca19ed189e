"""Reads of the vault's non-secret index: record keys, subject tokens, keyed subject refs.

Nothing here decrypts. These are what the gateway needs to *select* records before it
records and opens them (ids -> vault record keys -> live subjects, and the rows it will
open later, still sealed: ``stored.StoredRecords``), and the keyed
subject refs that ledger entries carry instead of subject ids. They read only the clear
index columns (``vault_records.record_key/subject``, ``vault_subjects.token``) and the
pseudonym index, so a caller never needs the vault's private tables or helpers.

A *subject ref* is the vault's keyed hash (HMAC-SHA256 with the vault's receipt key) of a
subject's pseudonymous token, cut to 128 bits: the custodian, who holds the key, can compute
it from a subject id; anyone reading the public log cannot invert it.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.store import Cursor
from bastion.vault.stored import StoredRecords
from bastion.vault.vault import Vault

REF_HEX = 32  # 128 bits: plenty to tell subjects apart, and entries stay small
# Label for a subject id that has no token (never ingested, or shredded): it still gets a
# keyed ref, never its raw id, and that ref can never equal a real token's.
_UNRESOLVED = "bastion/unresolved-subject/v1\x00"


def short_ref(keyed_hash: str) -> str:
    """``hmac-sha256:<64 hex>`` -> ``hmac-sha256:<32 hex>`` (pure; the form entries carry)."""
    prefix, _, digest = keyed_hash.rpartition(":")
    return f"{prefix}:{digest[:REF_HEX]}" if prefix else digest[:REF_HEX]


class VaultLookup:
    """Non-decrypting lookups over one vault, each in one read transaction."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    # ---- tokens and record keys -----------------------------------------------------------

    def tokens(self, values: Sequence[str]) -> dict[str, str]:
        """Identifying value -> its existing pseudonym token (values without one are left out).
        Never creates a token."""
        unique = list(dict.fromkeys(values))
        if not unique:
            return {}
        vault = self.vault
        vault.identity.load()  # outside the transaction: it reads the database itself
        with vault.db.transaction() as cur:
            found = vault._pseudonyms.lookup(cur, unique)
        return {value: token for value, (token, _owner) in found.items()}

    def resolve(self, dataset: str, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Record id -> (vault record key, subject token), for the ids that exist and whose
        subject still holds its data key (a shredded subject's records cannot be opened)."""
        keys, stored = self.resolve_records(dataset, ids, values=False)
        return {rid: (key, stored[key].subject) for rid, key in keys.items()}

    def resolve_records(
        self, dataset: str, ids: Sequence[str], *, values: bool
    ) -> tuple[dict[str, str], StoredRecords]:
        """Record id -> vault record key for the ids of live records, and those records'
        rows (with their clear column and sealed blob, still sealed, if ``values``).

        One read transaction: ids -> keys (the id's pseudonym where the record id is
        pseudonymized) -> live records, so the answer is one consistent snapshot, and the
        one read of ``vault_records`` a release makes.
        """
        spec = self.vault.catalog.dataset(dataset)
        unique = list(dict.fromkeys(ids))
        pseudonymized = spec.field(spec.record_id).pseudonymize
        vault = self.vault
        if pseudonymized and unique:
            vault.identity.load()
        with vault.db.transaction() as cur:
            if pseudonymized and unique:
                found = vault._pseudonyms.lookup(cur, unique)
                keys = {rid: str(pair[0]) for rid, pair in found.items()}
            else:
                keys = {rid: rid for rid in unique}
            stored = self._read(cur, dataset, list(keys.values()), values)
        return {rid: keys[rid] for rid in unique if keys.get(rid) in stored}, stored

    def live_subjects(self, dataset: str, record_keys: Sequence[str]) -> dict[str, str]:
        """Record key -> subject token, for the records that exist and whose subject still
        holds its data key."""
        return self.records(dataset, record_keys, values=False).subjects()

    def records(self, dataset: str, record_keys: Sequence[str], *, values: bool) -> StoredRecords:
        """The live records among ``record_keys``, in one read (values still sealed)."""
        self.vault.catalog.dataset(dataset)
        with self.vault.db.transaction() as cur:
            return self._read(cur, dataset, list(dict.fromkeys(record_keys)), values)

    def _read(self, cur: Cursor, dataset: str, keys: list[str], values: bool) -> StoredRecords:
        return StoredRecords.read(cur, self.vault.db.dialect, dataset, keys, values=values)

    # ---- keyed subject refs ---------------------------------------------------------------

    def subject_ref(self, token: str) -> str:
        """What ledger entries carry for a subject: the keyed ref of its token."""
        return short_ref(self.vault.subject_hash(token))

    def subject_ref_for_id(self, subject_id: str) -> str | None:
        """The ref of a subject id's token; None if the id has no token (no accesses exist)."""
        token = self.tokens([subject_id]).get(subject_id)
        return None if token is None else self.subject_ref(token)

    def subject_refs(self, subject_ids: Sequence[str]) -> list[str]:
        """A ref for each subject id, in order, never the id itself: the ref of its token, or
        for an id with no token a keyed ref of the id (so nothing raw is ever recorded)."""
        tokens = self.tokens(subject_ids)
        return [
            self.subject_ref(token)
            if (token := tokens.get(sid)) is not None
            else short_ref(self.vault.subject_hash(_UNRESOLVED + sid))
            for sid in subject_ids
        ]
