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
from collections.abc import Iterator
from contextlib import contextmanager
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
from bastion.policy.rows import columns, select
from bastion.store import Cursor, Database

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


@dataclass(frozen=True)
class PolicyVersionRow:
    """``policy_versions`` as stored: its columns, in order (the SELECT list,
    ``policy/rows.py``)."""

    version: int
    sha256: str
    previous_sha256: str | None
    text: str
    policy_ids: str  # the set's policy ids, one a line
    actor_id: str
    reason: str
    loaded_at: str
    ledger_index: int

    def stored(self) -> StoredPolicy:
        """The version as the store hands it out; IntegrityError if its text was edited."""
        stored = StoredPolicy(
            version=int(self.version),
            sha256=str(self.sha256),
            previous_sha256=self.previous_sha256,
            text=str(self.text),
            policy_ids=tuple(p for p in str(self.policy_ids).split("\n") if p),
            actor_id=str(self.actor_id),
            reason=str(self.reason),
            loaded_at=str(self.loaded_at),
            ledger_index=int(self.ledger_index),
        )
        if policy_sha256(stored.text) != stored.sha256:
            # Someone edited the stored text behind the ledger's back: refuse to use it.
            raise IntegrityError(f"policy version {stored.version} does not match its sha256")
        return stored


@dataclass(frozen=True)
class _ShaRow:
    """The active version's hash alone (the runtime's cheap re-check)."""

    sha256: str


class PolicyVersionRepository:
    """Reads of ``policy_versions`` (each its own statement) and ``writing()`` transactions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def writing(self) -> Iterator[PolicyVersionWrites]:
        with self.db.transaction(lock=_LOCK) as cur:
            yield PolicyVersionWrites(cur)

    def latest(self) -> PolicyVersionRow | None:
        rows = select(
            self.db, PolicyVersionRow, "FROM policy_versions ORDER BY version DESC LIMIT 1"
        )
        return rows[0] if rows else None

    def latest_sha256(self) -> str | None:
        rows = select(self.db, _ShaRow, "FROM policy_versions ORDER BY version DESC LIMIT 1")
        return str(rows[0].sha256) if rows else None

    def version(self, version: int) -> PolicyVersionRow | None:
        rows = select(
            self.db, PolicyVersionRow, "FROM policy_versions WHERE version = ?", (version,)
        )
        return rows[0] if rows else None

    def versions(self, *, limit: int) -> list[PolicyVersionRow]:
        return select(
            self.db,
            PolicyVersionRow,
            "FROM policy_versions ORDER BY version DESC LIMIT ?",
            (limit,),
        )


class PolicyVersionWrites:
    """The writes of one transaction under the policy store's lock
    (``PolicyVersionRepository.writing``)."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur

    def next_version(self) -> int:
        """One more than the highest version stored (1 for the first)."""
        found = self._cur.execute("SELECT MAX(version) FROM policy_versions").fetchone()
        (top,) = found if found else (None,)
        return int(top) + 1 if top is not None else 1

    def insert(self, row: PolicyVersionRow) -> None:
        self._cur.execute(
            f"INSERT INTO policy_versions ({columns(PolicyVersionRow)}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.version,
                row.sha256,
                row.previous_sha256,
                row.text,
                row.policy_ids,
                row.actor_id,
                row.reason,
                row.loaded_at,
                row.ledger_index,
            ),
        )


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
        self.repo = PolicyVersionRepository(db)
        self.ledger = ledger
        self.clock = clock
        self.public_text = public_text
        self.invariants = invariants
        self.principal_config = principal_config

    def active(self) -> StoredPolicy | None:
        row = self.repo.latest()
        return row.stored() if row else None

    def active_sha256(self) -> str | None:
        return self.repo.latest_sha256()

    def get(self, version: int) -> StoredPolicy | None:
        row = self.repo.version(version)
        return row.stored() if row else None

    def history(self, limit: int = 50) -> list[StoredPolicy]:
        return [row.stored() for row in self.repo.versions(limit=limit)]

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
        with self.repo.writing() as writes:
            version = writes.next_version()
            writes.insert(
                PolicyVersionRow(
                    version=version,
                    sha256=compiled.sha256,
                    previous_sha256=previous,
                    text=text,
                    policy_ids="\n".join(compiled.ids),
                    actor_id=actor.id,
                    reason=reason,
                    loaded_at=event.at,
                    ledger_index=receipt.index,
                )
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
