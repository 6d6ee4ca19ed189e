"""Vault test support: a vault on a given database, and small rows of the shipped catalog."""

from __future__ import annotations

from typing import Any

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.keys.provider import KeyProvider
from bastion.store import Database
from bastion.vault import Vault


def make_vault(db: Database, provider: KeyProvider, clock: FixedClock) -> Vault:
    Vault.create_schema(db)
    vault = Vault(db, provider, default_catalog(), clock)
    vault.ensure_identity()
    return vault


def user(n: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": f"u{n:05d}",
        "name": f"Person Number{n}",
        "email": f"person{n}@example.com",
        "phone": f"+1555{n:07d}",
        "birth_date": "1990-05-17",
        "country": "US",
        "region": "us-west",
        "age_band": "25-34",
        "signup_date": "2025-12-01",
        "device_ids": [f"dev-{n}-a", f"dev-{n}-b"],
        "ip_address": f"10.0.{n % 250}.{n % 200}",
        "location": [37.7749 + n / 1000, -122.4194],
        "language": "en-US",
    }
    row.update(over)
    return row


def event(n: int, user_n: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
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
    row.update(over)
    return row


def video(n: int, creator_n: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video_id": f"v{n:05d}",
        "creator_id": f"u{creator_n:05d}",
        "title": f"Video {n}",
        "category": "music",
        "duration_s": 30 + n,
        "uploaded_at": "2026-01-02T08:00:00Z",
        "region": "us-west",
        "upload_ip": "192.0.2.7",
    }
    row.update(over)
    return row


def numbered(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return list(enumerate(rows, start=1))
