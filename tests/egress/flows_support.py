"""Egress test support: a home with users and events on a backend, egress wired on it, and
the recipient's side (trust bundle, the deliveries in the files destination)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import bootstrap, ingest, sample_user
from bastion.egress.manifest import SIGNING_KEY_NAME
from bastion.egress.trust import EgressTrust, build_trust_bundle
from bastion.egress.wiring import Egress, open_egress
from bastion.events import Actor, decode_event
from bastion.gateway.runtime import Runtime
from bastion.keys.signing import load_or_create_signing_key
from bastion.ledger.anchors import log_anchors
from bastion.store import Database

ADMIN = Actor(id="ops-lena", kind="operator")
USERS = 12


@contextmanager
def home_with_events(
    db: Database, tmp_path: Path, clock: FixedClock, events: Iterable[Mapping[str, Any]]
) -> Iterator[Runtime]:
    """A bootstrapped home holding ``USERS`` users and ``events``."""
    runtime = bootstrap(init_home(tmp_path / "home"), db, clock, publish_interval=0.05)
    try:
        ingest(runtime, "users", [sample_user(n) for n in range(1, USERS + 1)])
        ingest(runtime, "events", list(events))
        yield runtime
    finally:
        runtime.close()


def egress_on(rt: Runtime) -> Egress:
    return open_egress(rt.home, rt.db, rt.vault, rt.ledger, rt.clock)


def entries(rt: Runtime) -> list[Any]:
    return [decode_event(bytes(rt.ledger.entry(i))) for i in range(rt.ledger.size())]


def trust_for(rt: Runtime, fields: dict[str, list[str]]) -> EgressTrust:
    """The recipient's bundle for these flows, from the home's log and manifest key."""
    key = load_or_create_signing_key(rt.home.keyring_dir, SIGNING_KEY_NAME)
    return build_trust_bundle(log_anchors(rt.ledger), [("custodian", key.public_key())], fields)


def deliveries(rt: Runtime, flow: str) -> list[Path]:
    """The deliveries of ``flow`` in the files destination ``outbox``, by manifest id."""
    root = rt.home.path / "outbox" / flow
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []
