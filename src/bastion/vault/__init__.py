"""The vault: per-subject envelope encryption, pseudonyms, crypto-shredding, rotation."""

from bastion.vault.plan import FieldRef, OpenedValues, ReadPlan, RecordedPlan
from bastion.vault.setup import home_catalog, ingest_file, initialize_vault, open_vault
from bastion.vault.stored import StoredRecords
from bastion.vault.vault import IngestResult, RecordRef, Vault, VaultStats

__all__ = [
    "FieldRef",
    "IngestResult",
    "OpenedValues",
    "ReadPlan",
    "RecordRef",
    "RecordedPlan",
    "StoredRecords",
    "Vault",
    "VaultStats",
    "home_catalog",
    "ingest_file",
    "initialize_vault",
    "open_vault",
]
