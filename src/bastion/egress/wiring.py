"""Egress on a home: the loader and the runner over its database, vault, log and policy.

Used by ``bastion egress`` and by the scheduler in ``bastion serve``; nothing below them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.catalog import Catalog
from bastion.clock import Clock
from bastion.egress.checks import BulkContext
from bastion.egress.destinations.base import Destination, destination_from_config
from bastion.egress.loading import FlowLoader
from bastion.egress.manifest import SIGNING_KEY_NAME
from bastion.egress.model import Flow
from bastion.egress.runner import FlowRunner, RunContext
from bastion.egress.store import EgressStore
from bastion.home import Home
from bastion.keys.signing import load_or_create_signing_key
from bastion.policy import initialize_policy
from bastion.policy.engine import PolicyEngine
from bastion.policy.store import PolicyRuntime, PolicyStore
from bastion.policy.thresholds import (
    LEGAL_THRESHOLDS,
    BulkCounter,
    configured_thresholds,
)
from bastion.store import Database
from bastion.vault import Vault
from bastion.vault.snapshot import distinct_subjects


@dataclass
class Egress:
    store: EgressStore
    loader: FlowLoader
    runner: FlowRunner
    context: RunContext
    interval_s: float = 60.0  # [egress] scheduler_interval_s


def open_egress(
    home: Home,
    db: Database,
    vault: Vault,
    log: Any,
    clock: Clock,
    *,
    catalog: Catalog | None = None,
    public_reason: Callable[[str], str] = lambda text: text,
    destination: Callable[[Flow], Destination] | None = None,
) -> Egress:
    """Wire egress for one process. ``log`` is the home's ``Log`` (appends, proofs)."""
    catalog = catalog or vault.catalog
    initialize_policy(db)  # the policy tables and the bulk counters (idempotent)
    policy = PolicyRuntime(PolicyStore(db, log, clock), catalog)
    store = EgressStore(db)
    thresholds = configured_thresholds(home.settings.gateway.bulk_thresholds)
    counter = BulkCounter(db, clock, thresholds)
    limits = dict(thresholds.employer) if thresholds else dict(LEGAL_THRESHOLDS)

    def bulk(flow: Flow) -> BulkContext:
        return BulkContext(
            reach=lambda dataset: distinct_subjects(vault, dataset),
            employer_usage=counter.usage("employer", flow.recipient.employer),
            limits=limits,
        )

    def engine() -> PolicyEngine:
        return policy.engine()

    def destination_of(flow: Flow) -> Destination:
        return destination_from_config(flow.destination.model_dump(), home=home.path)

    settings = home.settings.egress
    spool = Path(settings.spool_dir).expanduser()
    context = RunContext(
        vault=vault,
        log=log,
        store=store,
        catalog=catalog,
        engine=engine,
        counter=counter,
        signing_key=load_or_create_signing_key(home.keyring_dir, SIGNING_KEY_NAME),
        destination=destination or destination_of,
        spool_root=spool if spool.is_absolute() else home.path / spool,
        clock=clock,
        chunk_rows=settings.chunk_rows,
    )
    loader = FlowLoader(store, log, catalog, engine, bulk, clock, public_reason=public_reason)
    return Egress(store, loader, FlowRunner(context), context, settings.scheduler_interval_s)
