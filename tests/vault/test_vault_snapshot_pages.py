"""A snapshot read over many pages: the subject keys derived on one page and reused on later
ones never open what a later page must not (a subject shredded between pages, a lost erasure
secret), a key rotation between pages changes nothing the reader sees, and the garbage
collector paused while a page is opened is running again whenever a page is given out."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from vault_rows import event, numbered, user

from bastion.errors import IntegrityError, KeyUnavailable
from bastion.events import SYSTEM, Actor, CleanroomSnapshot, encode_event
from bastion.ledger.api import Receipt
from bastion.vault import Vault
from bastion.vault.changes import last_seq
from bastion.vault.plan import leaf_hash
from bastion.vault.snapshot import SnapshotBatch, SnapshotGrant, open_snapshot

FIELDS = ["day", "event_type", "ts", "user_id", "video_id", "watch_time_s"]
ADMIN = Actor(id="ops-lena", kind="operator")
USERS = 3
EVENTS = 12  # event n belongs to user 1 + n % 3: every page of 2 meets two users
_index = iter(range(1, 1_000_000))


def grant_for(vault: Vault, records: int = EVENTS) -> SnapshotGrant:
    n = next(_index)
    entry = encode_event(
        CleanroomSnapshot(
            actor=SYSTEM, reason="test", at="2026-01-01T00:00:00Z", snapshot_id=f"{n:032x}",
            dataset="events", fields=FIELDS, mode="full", after_seq=0,
            through_seq=last_seq(vault.db), records=records,
        )
    )  # fmt: skip
    receipt = Receipt(n, leaf_hash(entry))
    return SnapshotGrant.bind(receipt, entry, dataset="events", fields=FIELDS)


def rows_of(batches: list[SnapshotBatch]) -> dict[str, dict[str, Any]]:
    return {
        key: {name: values[i] for name, values in b.columns.items()}
        for b in batches
        for i, key in enumerate(b.record_keys)
    }


@pytest.fixture
def events_vault(vault: Vault) -> Vault:
    vault.ingest_rows("users", numbered([user(n) for n in range(1, USERS + 1)]))
    vault.ingest_rows("events", numbered([event(n, 1 + n % USERS) for n in range(EVENTS)]))
    return vault


def test_small_pages_open_exactly_what_one_page_opens(events_vault: Vault) -> None:
    whole = list(open_snapshot(events_vault, grant_for(events_vault), page=100))
    paged = list(open_snapshot(events_vault, grant_for(events_vault), page=2))
    assert len(whole) == 1 and len(paged) == EVENTS // 2
    assert rows_of(paged) == rows_of(whole) and len(rows_of(whole)) == EVENTS
    assert [s for b in paged for s in b.subjects] == whole[0].subjects


def test_a_subject_shredded_between_pages_opens_nothing_on_the_later_pages(
    events_vault: Vault,
) -> None:
    token = events_vault.pseudonym_of("u00002")
    pages = open_snapshot(events_vault, grant_for(events_vault), page=2)
    first = next(pages)
    assert token in first.subjects  # its key was derived for the first page
    events_vault.shred("u00002", ADMIN, "erasure request")
    later = list(pages)
    assert later and all(token not in b.subjects for b in later)
    opened = rows_of(later)
    assert all(row["user_id"] != token for row in opened.values())
    # Only the other two users' events of the later pages are opened.
    assert len(opened) == len([n for n in range(2, EVENTS) if 1 + n % USERS != 2])


def test_a_lost_erasure_secret_fails_a_later_page_even_with_the_key_derived(
    events_vault: Vault,
) -> None:
    token = events_vault.pseudonym_of("u00001")
    pages = open_snapshot(events_vault, grant_for(events_vault), page=2)
    assert token in next(pages).subjects
    # The secret gone but the subject's row left (a keyring that is not this database's):
    # the read stops, as the first page's would have, rather than open with the kept key.
    assert events_vault.provider.erasure.destroy(token)
    with pytest.raises(KeyUnavailable):
        list(pages)


def test_a_key_rotation_between_pages_changes_nothing_opened(events_vault: Vault) -> None:
    whole = rows_of(list(open_snapshot(events_vault, grant_for(events_vault), page=100)))
    pages = open_snapshot(events_vault, grant_for(events_vault), page=2)
    first = next(pages)
    events_vault.rotate(ADMIN, "yearly rotation")
    assert rows_of([first, *pages]) == whole


def test_the_collector_runs_again_whenever_a_page_is_given_out(events_vault: Vault) -> None:
    assert gc.isenabled()
    for _batch in open_snapshot(events_vault, grant_for(events_vault), page=2):
        assert gc.isenabled()  # paused only inside the read of a page
    assert gc.isenabled()
    # A caller that turned it off keeps it off.
    gc.disable()
    try:
        list(open_snapshot(events_vault, grant_for(events_vault), page=2))
        assert not gc.isenabled()
    finally:
        gc.enable()
    # A page that fails (more records than the entry recorded) leaves it on too.
    too_few = grant_for(events_vault, records=3)
    with pytest.raises(IntegrityError, match="more records"):
        list(open_snapshot(events_vault, too_few, page=2))
    assert gc.isenabled()
