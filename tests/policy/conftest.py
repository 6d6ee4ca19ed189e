"""Fixtures for the policy tests: principals of the pack, an engine, a ledger, services."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.events import decode_event
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.policy import (
    ApprovalService,
    PolicyEngine,
    PolicyRuntime,
    PolicyStore,
    PrincipalSpec,
    PublicText,
    default_policies,
    initialize_policy,
    text_commitment,
)
from bastion.store import Database


def recorded(log: Log) -> list[Any]:
    """Every event in the log, decoded, in order."""
    return [decode_event(log.entry(i)) for i in range(log.size())]


def make(id: str, role: str, **kw: Any) -> PrincipalSpec:
    base: dict[str, Any] = {
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "confidential",
        "amr": ("pwd", "mfa"),
    }
    base.update(kw)
    return PrincipalSpec(id=id, role=role, **base)


PEOPLE: dict[str, PrincipalSpec] = {
    "staff": make("alice", "engineer"),
    "staff_no_mfa": make("bob", "support", amr=("pwd",)),
    "staff_abroad": make("carol", "engineer", location_country="IE"),
    "moderator": make("mo", "moderator"),
    "engineer_abroad": make(
        "li", "engineer", employer="parentco", employer_country="SG", location_country="SG"
    ),
    "covered_engineer": make(
        "wei", "engineer", employer="parentco", employer_country="CN", location_country="CN"
    ),
    "covered_staff": make("eve", "engineer", location_country="HK"),
    "ad_partner": make("adco", "ad_partner", employer="adco", clearance="none"),
    "auditor": make("audra", "auditor", employer="audit-firm"),
    "subject": make("u1", "subject", employer=None, employer_country=None, clearance="none"),
    "officer1": make("sam", "security_officer", clearance="restricted"),
    "officer2": make("pat", "privacy_officer", clearance="restricted"),
    "officer3": make("kim", "security_officer", clearance="restricted"),
    "officer_no_mfa": make("olly", "security_officer", amr=("pwd",)),
    "policy_admin": make("ada", "policy_admin"),
    "nobody": make("nemo", "intern"),
}


@pytest.fixture
def people() -> dict[str, PrincipalSpec]:
    return PEOPLE


@pytest.fixture
def engine(clock: FixedClock) -> PolicyEngine:
    return PolicyEngine(default_policies(), default_catalog(), clock=clock)


@pytest.fixture
def ledger(db: Database, clock: FixedClock) -> Iterator[Log]:
    """The real transparency log on the test database (no background publisher)."""
    storage.create_tables(db)
    log = Log(
        db, NoteSigner("bastion.test/log", Ed25519PrivateKey.generate()), clock, background=False
    )
    yield log
    log.close()


@pytest.fixture
def policy_db(db: Database, ledger: Log, clock: FixedClock) -> Database:
    initialize_policy(db, ledger, clock=clock)
    return db


@pytest.fixture
def runtime(policy_db: Database, ledger: Log, clock: FixedClock) -> PolicyRuntime:
    return PolicyRuntime(
        PolicyStore(policy_db, ledger, clock), default_catalog(), refresh_seconds=0
    )


@pytest.fixture
def grant_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


# Stands in for the custodian's key free-text commitments are made under (the gateway
# derives it from the vault's keyed hash).
TEXT_KEY = hashlib.sha256(b"test free-text key").digest()


def commit_text(text: str) -> str:
    return text_commitment(TEXT_KEY, text)


@pytest.fixture
def public_text(policy_db: Database) -> PublicText:
    """The default: typed text reaches the log as a keyed commitment."""
    return PublicText(policy_db, commit_text)


@pytest.fixture
def approvals(
    policy_db: Database,
    ledger: Log,
    clock: FixedClock,
    runtime: PolicyRuntime,
    grant_key: Ed25519PrivateKey,
    public_text: PublicText,
) -> ApprovalService:
    return ApprovalService(
        policy_db,
        ledger,
        clock,
        runtime.engine,
        grant_key,
        subject_refs=fake_subject_refs,
        public_text=public_text,
    )


def fake_subject_refs(ids: Sequence[str]) -> list[str]:
    """Stands in for the vault's keyed refs (the gateway injects those): same shape, no id."""
    return [
        "hmac-sha256:" + hashlib.sha256(b"test-key\x00" + i.encode()).hexdigest()[:32] for i in ids
    ]
