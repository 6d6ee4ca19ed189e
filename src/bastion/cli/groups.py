"""The sub-command groups. Part modules add commands to these; main.py mounts them."""

from __future__ import annotations

import typer


def _group(name: str, help_text: str) -> typer.Typer:
    return typer.Typer(name=name, help=help_text, no_args_is_help=True)


vault_app = _group("vault", "Sealed records, per-subject keys, shredding, rotation, retention.")
keys_app = _group("keys", "Key providers: local keyring or PKCS#11 HSM.")
ledger_app = _group("ledger", "The transparency log: append, checkpoints, proofs, verification.")
policy_app = _group("policy", "Cedar policies: validate, load, explain.")
principals_app = _group("principals", "Principals and their JWT bearer tokens.")
access_app = _group("access", "Access requests, approvals, grants and break-glass.")
tickets_app = _group("tickets", "Registered tickets: the subjects a read under a ticket may touch.")
releases_app = _group(
    "releases", "Release assurance: reviews, provenance, approvals, verification."
)
cleanroom_app = _group("cleanroom", "Differentially private analytics for the ad partner.")
config_app = _group("config", "The settings in force for a home, and where each came from.")
subjects_app = _group("subjects", "Data-subject rights: export, erasure requests, legal holds.")
egress_app = _group(
    "egress", "Declared flows to outside recipients: load, run, deliver, verify on receipt."
)

ALL_GROUPS = (
    vault_app,
    keys_app,
    ledger_app,
    policy_app,
    principals_app,
    access_app,
    tickets_app,
    releases_app,
    cleanroom_app,
    config_app,
    subjects_app,
    egress_app,
)
