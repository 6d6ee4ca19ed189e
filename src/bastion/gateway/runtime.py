"""What one gateway process holds for a home: database, vault, log, policy, approvals, keys.

``Runtime.open(home)`` is what ``bastion serve`` uses; tests and the demo build one from a
database they already hold with ``Runtime.build``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from bastion.catalog import Catalog
from bastion.clock import Clock, SystemClock
from bastion.extras import require
from bastion.gateway.auth import TokenIssuer, TokenVerifier, TrustedIssuer
from bastion.gateway.bulk_commits import BulkCommits
from bastion.gateway.config import GatewayConfig, gateway_config, load_external_issuers
from bastion.gateway.metrics import GatewayMetrics
from bastion.gateway.transparency import SubjectIndex, migrate_index
from bastion.home import Home
from bastion.keys.signing import load_or_create_signing_key
from bastion.ledger.api import LedgerWriter
from bastion.policy import (
    GRANT_KEY_NAME,
    ApprovalConfig,
    ApprovalService,
    BulkCounter,
    BulkThresholds,
    PolicyEngine,
    PolicyRuntime,
    PolicyStore,
    PublicText,
    TicketService,
    keyed_commitment,
    migrate_free_text,
    migrate_tickets,
    text_key,
)
from bastion.policy.invariants import invariants_for
from bastion.policy.registry import PrincipalRegistry
from bastion.policy.thresholds import configured_thresholds
from bastion.store import Database, open_database
from bastion.vault import Vault
from bastion.vault.lookup import VaultLookup

log = logging.getLogger(__name__)

ISSUER_KEY_NAME = "issuer"


def bulk_thresholds(config: GatewayConfig) -> BulkThresholds | None:
    """The configured limits (both scopes), over the legal ones; None: the law's alone."""
    return configured_thresholds(config.bulk_thresholds)


def own_issuer(home: Home, clock: Clock) -> TokenIssuer:
    """The custodian's own token issuer: the keyring's ``issuer`` Ed25519 key."""
    config = gateway_config(home.settings)
    key = load_or_create_signing_key(home.keyring_dir, ISSUER_KEY_NAME)
    return TokenIssuer(key, issuer=config.issuer, audience=config.audience, clock=clock)


def public_text_for(home: Home, db: Database, vault: Vault) -> PublicText:
    """The home's ``free_text`` setting, committing under a key derived from the vault's keyed
    subject hash (the secret subject refs come from; read on first use). Creates the
    ``free_texts`` table in homes made before it existed."""
    migrate_free_text(db)
    return PublicText(
        db, keyed_commitment(lambda: text_key(vault.subject_hash)), home.settings.free_text
    )


@dataclass
class Runtime:
    """Everything the request path needs, wired once per process."""

    home: Home
    db: Database
    clock: Clock
    catalog: Catalog
    vault: Vault
    ledger: Any  # bastion.ledger.log.Log: LedgerWriter plus reads, proofs and the /log/ router
    policy: PolicyRuntime
    policy_store: PolicyStore
    approvals: ApprovalService
    # Typed text (purposes, justification details, reasons) as the public log carries it.
    public_text: PublicText
    bulk: BulkCounter
    issuer: TokenIssuer
    verifier: TokenVerifier
    config: GatewayConfig
    subject_index: SubjectIndex
    # Who may call, and which attributes each may hold (policy/registry.py).
    registry: PrincipalRegistry
    # Registered tickets: the subjects a read under a ticket may touch (policy/tickets.py).
    tickets: TicketService
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    owns_db: bool = False
    owns_ledger: bool = True
    _cleanroom: Any = None
    lookup: VaultLookup = field(init=False)
    # Bulk-counted releases of one principal, submitted together (bulk_commits.py).
    bulk_commits: BulkCommits = field(init=False)
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # The vault's public, non-decrypting lookups (ids -> keys -> live subjects, refs).
        self.lookup = VaultLookup(self.vault)
        self.bulk_commits = BulkCommits(
            lambda entries, side_write: self.writer.append_entries(entries, side_write=side_write),
            self.db.bounds.commit_wait_s,
        )

    @property
    def writer(self) -> LedgerWriter:
        writer: LedgerWriter = self.ledger
        return writer

    def subject_ref(self, token: str) -> str:
        """What ledger entries carry for a subject: the vault's keyed hash of its pseudonymous
        token, cut to 128 bits (plenty to tell subjects apart; entries stay small)."""
        return self.lookup.subject_ref(token)

    def subject_ref_for_id(self, subject_id: str) -> str | None:
        return self.lookup.subject_ref_for_id(subject_id)

    def engine(self) -> PolicyEngine:
        return self.policy.engine()

    def cleanroom(self) -> Any:
        """The clean room (DuckDB over the vault's snapshot), opened on first use, with the
        home's ``[cleanroom]`` settings (per-query ε cap, δ, selection share, confidence,
        response padding): the same limits ``bastion cleanroom query`` applies."""
        with self._lock:
            if self._cleanroom is None:
                require("analytics", "the clean room")  # a 503 naming the extra, not a 500
                from bastion.cleanroom import open_cleanroom

                # Over the snapshot Bastion builds from the vault (the refresher of
                # `bastion serve`); each query first checks it is there and current.
                self._cleanroom = open_cleanroom(
                    self.home, self.db, self.ledger, self.clock, catalog=self.catalog
                )
            return self._cleanroom

    def snapshot_builder(self) -> Any:
        """What refreshes the clean room's snapshot from this runtime's vault and log."""
        require("analytics", "the clean room's snapshot")
        from bastion.cleanroom import CleanRoomConfig, default_data_dir
        from bastion.cleanroom.snapshot import SnapshotBuilder

        return SnapshotBuilder(
            self.vault,
            self.writer,
            self.clock,
            default_data_dir(self.home.path, self.home.settings),
            config=CleanRoomConfig.from_settings(self.home.settings),
        )

    @classmethod
    def open(cls, home: Home, *, clock: Clock | None = None) -> Runtime:
        """Open the home's database (``BASTION_DATABASE_URL`` wins) and wire every part."""
        db = open_database(home.database_url, bounds=home.settings.bounds)
        try:
            rt = cls.build(home, db, clock or SystemClock())
        except BaseException:
            db.close()
            raise
        rt.owns_db = True
        return rt

    @classmethod
    def build(
        cls,
        home: Home,
        db: Database,
        clock: Clock,
        *,
        ledger: Any | None = None,
        extra_issuers: list[TrustedIssuer] | None = None,
    ) -> Runtime:
        from bastion.ledger.log import open_log
        from bastion.vault import open_vault

        config = gateway_config(home.settings)
        vault = open_vault(home, db, clock)
        lookup = VaultLookup(vault)
        catalog = vault.catalog
        log = ledger if ledger is not None else open_log(home, db, clock)
        public_text = public_text_for(home, db, vault)
        # A policy load's typed reason reaches the log as public_text publishes it.
        store = PolicyStore(
            db,
            log,
            clock,
            public_text=public_text,
            invariants=invariants_for(home.settings, home.path),
        )
        policy = PolicyRuntime(store, catalog)
        approvals = ApprovalService(
            db,
            log,
            clock,
            policy.engine,
            load_or_create_signing_key(home.keyring_dir, GRANT_KEY_NAME),
            # Approval events name subjects by the same keyed refs as access decisions.
            subject_refs=lookup.subject_refs,
            public_text=public_text,
            config=ApprovalConfig.from_settings(home.settings),
        )
        # Tickets name subjects in the log by the same keyed refs.
        migrate_tickets(db)  # homes made before tickets were registered
        tickets = TicketService(db, log, clock, policy.engine, subject_refs=lookup.subject_refs)
        bulk = BulkCounter(db, clock, bulk_thresholds(config))
        registry = PrincipalRegistry(db, clock)
        registry.migrate()
        issuer = own_issuer(home, clock)
        trusted = [
            TrustedIssuer(issuer.issuer, {issuer.jwk["kid"]: issuer.public_key}, source="own"),
            *load_external_issuers(home, config),
            *(extra_issuers or []),
        ]
        verifier = TokenVerifier(
            trusted,
            audience=config.audience,
            clock=clock,
            # A data subject's token names them by subject id; entries carry its ref.
            subject_ref=lambda subject_id: lookup.subject_refs([subject_id])[0],
        )
        migrate_index(db)

        rt = cls(
            home=home,
            db=db,
            clock=clock,
            catalog=catalog,
            vault=vault,
            ledger=log,
            owns_ledger=ledger is None,
            policy=policy,
            policy_store=store,
            approvals=approvals,
            public_text=public_text,
            bulk=bulk,
            issuer=issuer,
            verifier=verifier,
            config=config,
            subject_index=SubjectIndex(db, log, lambda _subject: None),
            registry=registry,
            tickets=tickets,
        )
        rt.subject_index.subject_ref = rt.subject_ref_for_id
        return rt

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        close_log = getattr(self.ledger, "close", None)
        if self.owns_ledger and callable(close_log):
            close_log()
        provider = getattr(self.vault, "provider", None)
        close_provider = getattr(provider, "close", None)
        if callable(close_provider):
            close_provider()
        engine = getattr(self._cleanroom, "engine", None)
        close_engine = getattr(engine, "close", None)
        if callable(close_engine):
            close_engine()
        if self.owns_db:
            self.db.close()
