"""The policy store on both backends: versions, ledger before activation, refusal keeps the
old set, every process follows the policy in force."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import BaseModel

from bastion.catalog import default_catalog
from bastion.clock import FixedClock
from bastion.errors import IntegrityError, LedgerUnavailable, NotInitialized
from bastion.events import SYSTEM, Actor, PolicyChange
from bastion.ledger.api import Receipt, SideWrite
from bastion.ledger.log import Log
from bastion.policy import (
    PlanRequest,
    PolicyRejected,
    PolicyRuntime,
    PolicyStore,
    default_pack_text,
    initialize_policy,
)
from bastion.policy.store import migrate_policy_store
from bastion.store import Database

from .conftest import PEOPLE, recorded

ADMIN = Actor(id="ada", kind="operator", role="policy_admin")

NO_MODERATOR_EMAIL = default_pack_text() + (
    '\n@id("moderators-never-see-email")\n'
    'forbid (principal, action, resource == Bastion::Field::"users.email")\n'
    'when { principal.role == "moderator" };\n'
)


class DownLedger:
    def append(self, event: BaseModel) -> Receipt:
        raise LedgerUnavailable("ledger is down")

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]:
        raise LedgerUnavailable("ledger is down")

    def append_entries(
        self, entries: Sequence[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]:
        raise LedgerUnavailable("ledger is down")


def test_initialize_installs_the_pack_once_and_records_it(
    db: Database, ledger: Log, clock: FixedClock
) -> None:
    summary = initialize_policy(db, ledger, clock=clock)
    assert summary["policy"].startswith("v1 ")
    again = initialize_policy(db, ledger, clock=clock)["policy"]
    assert summary["policy"].startswith(again)
    events = recorded(ledger)
    assert len(events) == 1 and isinstance(events[0], PolicyChange)
    assert events[0].previous_sha256 is None
    assert "covered-persons-denied-protected" in events[0].policies
    active = PolicyStore(db, ledger, clock).active()
    assert active is not None and active.ledger_index == 0 and active.actor_id == SYSTEM.id


def test_load_records_then_activates_a_new_version(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    store = PolicyStore(policy_db, ledger, clock)
    before = store.active()
    assert before is not None
    result = store.load(NO_MODERATOR_EMAIL, ADMIN, "moderators must not see email at all")
    assert result.changed and result.version == 2
    assert result.previous_sha256 == before.sha256
    event = recorded(ledger)[-1]
    assert isinstance(event, PolicyChange)
    assert event.policy_sha256 == result.sha256 and event.actor.id == "ada"
    assert "moderators-never-see-email" in event.policies
    active = store.active()
    assert active is not None and active.sha256 == result.sha256
    assert active.ledger_index == result.receipt.index  # type: ignore[union-attr]
    assert [v.version for v in store.history()] == [2, 1]


def test_loading_the_same_text_changes_nothing(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    store = PolicyStore(policy_db, ledger, clock)
    n = ledger.size()
    result = store.load(default_pack_text(), ADMIN, "again")
    assert not result.changed and result.version == 1
    assert ledger.size() == n


def test_an_invalid_set_is_refused_and_the_old_one_stays(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    store = PolicyStore(policy_db, ledger, clock)
    before = store.active()
    n = ledger.size()
    bad = (
        default_pack_text() + '\n@id("x") @transform("clear") permit (principal, action, '
        'resource is Bastion::Field) when { principal.nationality == "US" };\n'
    )
    with pytest.raises(PolicyRejected, match="nationality"):
        store.load(bad, ADMIN, "try an unknown attribute")
    assert store.active() == before
    assert ledger.size() == n  # nothing recorded for a refused set


def test_ledger_down_means_nothing_activates(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    before = PolicyStore(policy_db, ledger, clock).active()
    with pytest.raises(LedgerUnavailable):
        PolicyStore(policy_db, DownLedger(), clock).load(NO_MODERATOR_EMAIL, ADMIN, "change")
    assert PolicyStore(policy_db, ledger, clock).active() == before


def test_runtime_follows_the_active_policy(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    store = PolicyStore(policy_db, ledger, clock)
    runtime = PolicyRuntime(store, default_catalog(), refresh_seconds=0)
    req = PlanRequest(dataset="users", fields=("email",))
    assert runtime.engine().plan(PEOPLE["moderator"], req).field("email").transform.value == "mask"
    # Another process (another store on the same database) loads a stricter policy.
    PolicyStore(policy_db, ledger, clock).load(NO_MODERATOR_EMAIL, ADMIN, "stricter")
    plan = runtime.engine().plan(PEOPLE["moderator"], req)
    assert plan.field("email").policies == ("moderators-never-see-email",)
    assert plan.policy_sha256 == store.active_sha256()


def test_no_policy_loaded_fails_closed(db: Database, ledger: Log, clock: FixedClock) -> None:
    migrate_policy_store(db)
    runtime = PolicyRuntime(PolicyStore(db, ledger, clock), default_catalog())
    with pytest.raises(NotInitialized):
        runtime.engine()


def test_a_tampered_stored_policy_is_refused(
    policy_db: Database, ledger: Log, clock: FixedClock
) -> None:
    with policy_db.transaction() as cur:
        cur.execute(
            "UPDATE policy_versions SET text = ? WHERE version = 1",
            ('@id("all") @transform("clear") permit (principal, action, resource);',),
        )
    with pytest.raises(IntegrityError, match="sha256"):
        PolicyStore(policy_db, ledger, clock).active()
    runtime = PolicyRuntime(PolicyStore(policy_db, ledger, clock), default_catalog())
    with pytest.raises(IntegrityError):
        runtime.engine()
