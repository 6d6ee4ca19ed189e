"""Fixtures for the policy tests: principals of the pack, an engine, a ledger, services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.events import decode_event, encode_event
from bastion.ledger.api import Receipt
from bastion.policy import (
    ApprovalService,
    PolicyEngine,
    PolicyRuntime,
    PolicyStore,
    PrincipalSpec,
    default_policies,
    initialize_policy,
)
from bastion.store import Database


class EntryLedger:
    """Keeps the canonical entries appended, in order (what the log's sequencer receives)."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []

    def append(self, event: BaseModel) -> Receipt:
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        out = []
        for e in events:
            entry = encode_event(e)  # type: ignore[arg-type]
            self.entries.append(entry)
            out.append(Receipt(len(self.entries) - 1, b""))
        return out

    def events(self) -> list[Any]:
        return [decode_event(e) for e in self.entries]


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
def ledger() -> EntryLedger:
    return EntryLedger()


@pytest.fixture
def policy_db(db: Database, ledger: EntryLedger, clock: FixedClock) -> Database:
    initialize_policy(db, ledger, clock=clock)
    return db


@pytest.fixture
def runtime(policy_db: Database, ledger: EntryLedger, clock: FixedClock) -> PolicyRuntime:
    return PolicyRuntime(
        PolicyStore(policy_db, ledger, clock), default_catalog(), refresh_seconds=0
    )


@pytest.fixture
def grant_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def approvals(
    policy_db: Database,
    ledger: EntryLedger,
    clock: FixedClock,
    runtime: PolicyRuntime,
    grant_key: Ed25519PrivateKey,
) -> ApprovalService:
    return ApprovalService(policy_db, ledger, clock, runtime.engine, grant_key)
