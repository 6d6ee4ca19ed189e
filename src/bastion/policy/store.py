"""The policy store: versioned policy sets in the database, each change recorded in the ledger.

Loading a policy set: compile it (parse, schema-validate, lint) -> refuse it, keeping the old
one, if anything is wrong -> append a ``PolicyChange`` event to the ledger -> only then
activate it as the next version. If the ledger append fails nothing changes, so the ledger
always knows at least every policy that was ever in force.

The ledger is public and the reason is typed text (it can name a person), so the event carries
what ``public_text`` publishes for it: a keyed commitment by default, the text kept in the
database (``free_texts``, and ``policy_versions.reason``). See ``policy/freetext.py``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from bastion.catalog import Catalog
from bastion.clock import Clock, iso
from bastion.errors import IntegrityError, NotInitialized
from bastion.events import Actor, PolicyChange
from bastion.ledger.api import LedgerWriter, Receipt
from bastion.policy.compiler import CompiledPolicies, compile_policies, policy_sha256
from bastion.policy.engine import PolicyEngine
from bastion.policy.freetext import PublicText
from bastion.policy.invariants import CheckReport, InvariantSet, enforce_invariants
from bastion.policy.principal import DEFAULT_PRINCIPAL_CONFIG, PrincipalConfig
from bastion.store import Database

POLICY_DDL = [
    """CREATE TABLE IF NOT EXISTS policy_versions (
        version {int} PRIMARY KEY,
        sha256 TEXT NOT NULL,
        previous_sha256 TEXT,
        text TEXT NOT NULL,
        policy_ids TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        loaded_at TEXT NOT NULL,
        ledger_index {int} NOT NULL
    )""",
]

_LOCK = "policy-store"


@dataclass(frozen=True)
class StoredPolicy:
    version: int
    sha256: str
    previous_sha256: str | None
    text: str
    policy_ids: tuple[str, ...]
    actor_id: str
    reason: str
    loaded_at: str
    ledger_index: int

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "previous_sha256": self.previous_sha256,
            "policies": list(self.policy_ids),
            "actor": self.actor_id,
            "reason": self.reason,
            "loaded_at": self.loaded_at,
            "ledger_index": self.ledger_index,
        }


@dataclass(frozen=True)
class PolicyLoadResult:
    changed: bool
    version: int
    sha256: str
    previous_sha256: str | None
    compiled: CompiledPolicies
    event: PolicyChange | None = None
    receipt: Receipt | None = None
    check: CheckReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "version": self.version,
            "sha256": self.sha256,
            "previous_sha256": self.previous_sha256,
            "policies": self.compiled.ids,
            "ledger_index": self.receipt.index if self.receipt else None,
            "invariants": [r.invariant.id for r in self.check.results] if self.check else [],
        }


def migrate_policy_store(db: Database) -> None:
    db.migrate("policy", POLICY_DDL)


_COLUMNS = (
    "version, sha256, previous_sha256, text, policy_ids, actor_id, reason, loaded_at, ledger_index"
)


def _row(row: tuple[Any, ...]) -> StoredPolicy:
    stored = StoredPolicy(
        version=int(row[0]),
        sha256=str(row[1]),
        previous_sha256=row[2],
        text=str(row[3]),
        policy_ids=tuple(p for p in str(row[4]).split("\n") if p),
        actor_id=str(row[5]),
        reason=str(row[6]),
        loaded_at=str(row[7]),
        ledger_index=int(row[8]),
    )
    if policy_sha256(stored.text) != stored.sha256:
        # Someone edited the stored text behind the ledger's back: refuse to use it.
        raise IntegrityError(f"policy version {stored.version} does not match its sha256")
    return stored


class PolicyStore:
    def __init__(
        self,
        db: Database,
        ledger: LedgerWriter,
        clock: Clock,
        *,
        public_text: PublicText | None = None,
        invariants: InvariantSet | None = None,
        principal_config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG,
    ) -> None:
        """``public_text`` turns a load's typed reason into what the event carries (a
        commitment by default). Without one the reason goes in clear: only for stores that
        load with reasons Bastion writes itself (``initialize_policy``'s "install the shipped
        policy pack") or that only read.

        ``invariants`` (the shipped ones by default) must hold for every set this store
        loads, checked with the principal derivation the gateway uses (``principal_config``)."""
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.public_text = public_text
        self.invariants = invariants
        self.principal_config = principal_config

    def active(self) -> StoredPolicy | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM policy_versions ORDER BY version DESC LIMIT 1"
        )
        return _row(rows[0]) if rows else None

    def active_sha256(self) -> str | None:
        rows = self.db.query("SELECT sha256 FROM policy_versions ORDER BY version DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    def get(self, version: int) -> StoredPolicy | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM policy_versions WHERE version = ?", (version,)
        )
        return _row(rows[0]) if rows else None

    def history(self, limit: int = 50) -> list[StoredPolicy]:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM policy_versions ORDER BY version DESC LIMIT ?", (limit,)
        )
        return [_row(r) for r in rows]

    def load(
        self, text: str, actor: Actor, reason: str, *, source: str = "policy"
    ) -> PolicyLoadResult:
        """Validate, prove the invariants, record, activate. Raises PolicyRejected (an
        InvariantViolated with its counterexamples when an invariant breaks; the old set stays)
        or the ledger's error (nothing activated)."""
        compiled = compile_policies(text, source=source)
        check = enforce_invariants(
            compiled, self.invariants, principal_config=self.principal_config, source=source
        )
        current = self.active()
        previous = current.sha256 if current else None
        if current is not None and current.sha256 == compiled.sha256:
            return PolicyLoadResult(
                False, current.version, compiled.sha256, previous, compiled, check=check
            )
        # Stored (free_texts) before the append, as PublicText does for every event.
        published = self.public_text.publish(reason) if self.public_text else reason
        event = PolicyChange(
            actor=actor,
            reason=published,
            at=iso(self.clock.now()),
            policy_sha256=compiled.sha256,
            previous_sha256=previous,
            policies=compiled.ids,
        )
        receipt = self.ledger.append(event)  # log before activating
        with self.db.transaction(lock=_LOCK) as cur:
            row = cur.execute("SELECT MAX(version) FROM policy_versions").fetchone()
            version = int(row[0]) + 1 if row and row[0] is not None else 1
            cur.execute(
                f"INSERT INTO policy_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    compiled.sha256,
                    previous,
                    text,
                    "\n".join(compiled.ids),
                    actor.id,
                    reason,
                    event.at,
                    receipt.index,
                ),
            )
        return PolicyLoadResult(
            True, version, compiled.sha256, previous, compiled, event, receipt, check=check
        )


class PolicyRuntime:
    """Hands out the engine for the policy in force, following changes made by any process.

    The active version is re-read at most every ``refresh_seconds`` (a cheap query); a change
    compiles a new engine. With no policy loaded it raises NotInitialized: nothing is allowed.
    """

    def __init__(
        self,
        store: PolicyStore,
        catalog: Catalog,
        *,
        principal_config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.principal_config = principal_config
        self.refresh_seconds = refresh_seconds
        self._engine: PolicyEngine | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def engine(self) -> PolicyEngine:
        # Monotonic time only paces the re-check; it never decides anything.
        now = time.monotonic()
        with self._lock:
            if self._engine is not None and now - self._checked < self.refresh_seconds:
                return self._engine
            sha = self.store.active_sha256()
            if sha is None:
                raise NotInitialized("no policy is loaded: run `bastion policy load` first")
            if self._engine is None or self._engine.sha256 != sha:
                stored = self.store.active()
                if stored is None:
                    raise NotInitialized("no policy is loaded: run `bastion policy load` first")
                compiled = compile_policies(stored.text, source=f"policy v{stored.version}")
                self._engine = PolicyEngine(
                    compiled,
                    self.catalog,
                    clock=self.store.clock,
                    principal_config=self.principal_config,
                )
            self._checked = now
            return self._engine

    def invalidate(self) -> None:
        with self._lock:
            self._checked = 0.0
