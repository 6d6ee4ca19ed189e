"""Stand up a complete gateway runtime on a database: vault, log, shipped policy, index.

Used by the demo, the benchmark and the tests. ``bastion init`` plus ``bastion serve`` does
the same for an operator's home.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bastion.clock import Clock
from bastion.gateway.runtime import Runtime
from bastion.home import Home
from bastion.store import Database

PRINCIPALS: dict[str, dict[str, Any]] = {
    # The custodian's own engineer, in the US, with MFA.
    "alice": {
        "role": "engineer",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "confidential",
        "amr": ["pwd", "mfa"],
    },
    # The global platform's engineer abroad (not a country of concern).
    "kenji": {
        "role": "engineer",
        "employer": "globalco",
        "employer_country": "SG",
        "location_country": "SG",
        "clearance": "internal",
        "amr": ["pwd", "mfa"],
    },
    # An engineer of the parent company in a country of concern: a covered person.
    "wei": {
        "role": "engineer",
        "employer": "parentco",
        "employer_country": "CN",
        "location_country": "CN",
        "clearance": "restricted",
        "amr": ["pwd", "mfa"],
    },
    "sofia": {
        "role": "security_officer",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "restricted",
        "amr": ["pwd", "hwk"],
    },
    "omar": {
        "role": "privacy_officer",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "restricted",
        "amr": ["pwd", "otp"],
    },
    "mod": {
        "role": "moderator",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "internal",
        "amr": ["pwd", "mfa"],
    },
    "audra": {
        "role": "auditor",
        "employer": "regulator",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["pwd", "mfa"],
    },
    "pat": {
        "role": "policy_admin",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "restricted",
        "amr": ["pwd", "mfa"],
    },
    # The custodian's ticketing system: it registers the tickets staff read under
    # (POST /tickets), naming each ticket's subjects.
    "helpdesk": {
        "role": "ticketing_service",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["pwd"],
    },
    # The platform's US back-end services: they write through the gateway. A service
    # authenticates with a hardware-bound workload key (amr "hwk").
    "profile-service": {
        "role": "service",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["hwk"],
    },
    "content-service": {
        "role": "service",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["hwk"],
    },
    "events-service": {
        "role": "service",
        "employer": "custodian",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["hwk"],
    },
    "adco": {
        "role": "ad_partner",
        "employer": "adpartner",
        "employer_country": "US",
        "location_country": "US",
        "clearance": "none",
        "amr": ["pwd"],
    },
}


# The datasets each demo service is registered for (the registry's allow-list).
SERVICE_DATASETS: dict[str, tuple[str, ...]] = {
    "profile-service": ("users",),
    "content-service": ("videos",),
    "events-service": ("events",),
}


def register_principals(rt: Runtime, names: Iterable[str] | None = None) -> None:
    """Register the demo's principals (``PRINCIPALS``) with Bastion's own issuer, each allowed
    exactly its role, employer, employer country and clearance."""
    from bastion.policy.registry import PrincipalEntry

    for name in names if names is not None else PRINCIPALS:
        attrs = PRINCIPALS[name]
        rt.registry.register(
            PrincipalEntry(
                issuer=rt.issuer.issuer,
                sub=name,
                roles=(attrs["role"],),
                employer=attrs.get("employer"),
                employer_country=attrs.get("employer_country"),
                max_clearance=attrs.get("clearance", "none"),
                datasets=SERVICE_DATASETS.get(name),
            )
        )


def initialize_all(home: Home, db: Database, clock: Clock) -> dict[str, Any]:
    """Create every part's tables and keys, and install the shipped policy pack."""
    from bastion.ledger.log import initialize_log, open_log
    from bastion.policy import initialize_policy
    from bastion.vault import initialize_vault

    summary: dict[str, Any] = {}
    summary.update(initialize_vault(home, db))
    summary.update(initialize_log(db, home.keyring_dir, home.settings.log_origin, clock))
    log = open_log(home, db, clock, background=False)
    try:
        summary.update(initialize_policy(db, log, clock=clock))
    finally:
        log.close()
    return summary


def bootstrap(home: Home, db: Database, clock: Clock, *, publish_interval: float = 0.1) -> Runtime:
    """Initialize (idempotent) and wire a Runtime whose log publishes every ``interval``."""
    from bastion.ledger.log import open_log

    initialize_all(home, db, clock)
    log = open_log(home, db, clock, publish_interval=publish_interval)
    try:
        rt = Runtime.build(home, db, clock, ledger=log)
        rt.owns_ledger = True
        register_principals(rt)
        return rt
    except BaseException:
        log.close()
        raise


def ingest(rt: Runtime, dataset: str, rows: Iterable[Mapping[str, Any]]) -> int:
    result = rt.vault.ingest_rows(dataset, enumerate(rows, start=1), source=f"<{dataset}>")
    return int(result.rows)


def sample_user(n: int) -> dict[str, Any]:
    return {
        "user_id": f"u{n:05d}",
        "name": f"Person Number{n}",
        "email": f"person{n}@example.com",
        "phone": f"+1555{n:07d}",
        "birth_date": f"{1970 + n % 40}-05-17",
        "country": "US",
        "region": "us-west",
        "age_band": "25-34",
        "signup_date": "2025-12-01",
        "device_ids": [f"dev-{n}-a", f"dev-{n}-b"],
        "ip_address": f"10.0.{n % 250}.{n % 200}",
        "location": [37.7749 + (n % 1000) / 10_000, -122.4194],
        "language": "en-US",
    }


def sample_event(n: int, user_n: int) -> dict[str, Any]:
    return {
        "event_id": f"e{n:08d}",
        "user_id": f"u{user_n:05d}",
        "video_id": f"v{n % 7:05d}",
        "event_type": "view",
        "ts": "2026-01-03T10:11:12Z",
        "day": "2026-01-03",
        "watch_time_s": 12.5 + n,
        "campaign_id": None,
        "revenue_usd": None,
        "age_band": "25-34",
        "region": "us-west",
        "device_id": f"dev-{user_n}-a",
    }
