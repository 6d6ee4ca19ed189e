"""Vault test support: a vault on a given database, and small rows of the shipped catalog."""

from __future__ import annotations

from typing import Any

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.demo.platform import sample_event, sample_user
from bastion.keys.provider import KeyProvider
from bastion.store import Database
from bastion.vault import Vault


def make_vault(db: Database, provider: KeyProvider, clock: FixedClock) -> Vault:
    Vault.create_schema(db)
    vault = Vault(db, provider, default_catalog(), clock)
    vault.ensure_identity()
    return vault


def user(n: int, **over: Any) -> dict[str, Any]:
    """The demo's sample user, with a fixed birth date and a location that moves 1/1000 of a
    degree per user (the vault's tests read them back exactly)."""
    return {
        **sample_user(n),
        "birth_date": "1990-05-17",
        "location": [37.7749 + n / 1000, -122.4194],
        **over,
    }


def event(n: int, user_n: int, **over: Any) -> dict[str, Any]:
    return {**sample_event(n, user_n), **over}


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
