"""VaultLookup: ids -> record keys -> live subjects, and keyed subject refs, without decrypting.

The gateway selects records with these before it records and opens anything, so they must
(a) agree with the vault's own answers, (b) drop shredded subjects, (c) never need a data key,
and (d) never hand back a raw subject id where a ref is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import vault_rows as R

from bastion.errors import InputError, KeyUnavailable
from bastion.events import Actor
from bastion.vault import Vault
from bastion.vault.lookup import VaultLookup, short_ref

OPERATOR = Actor(id="dpo", kind="operator")


@pytest.fixture
def loaded(vault: Vault) -> Vault:
    vault.ingest_rows("users", R.numbered([R.user(n) for n in (1, 2, 3)]))
    vault.ingest_rows("events", R.numbered([R.event(i, 1 + i % 3) for i in range(1, 7)]))
    return vault


def _token(vault: Vault, value: str) -> str:
    token = vault.pseudonym_of(value)
    assert token is not None
    return token


def test_resolve_pseudonymized_and_plain_record_ids(loaded: Vault) -> None:
    look = VaultLookup(loaded)
    t1, t2 = _token(loaded, "u00001"), _token(loaded, "u00002")
    users = look.resolve("users", ["u00002", "u00001", "u99999", "u00001"])
    assert users == {"u00002": (t2, t2), "u00001": (t1, t1)}  # unknown ids are left out
    assert list(users) == ["u00002", "u00001"]  # the caller's order, once each
    events = look.resolve("events", ["e00000001", "e00000002", "e99999999"])
    # Events are keyed by their own id; the subject is the acting user's token.
    assert events == {
        "e00000001": ("e00000001", t2),
        "e00000002": ("e00000002", _token(loaded, "u00003")),
    }
    assert look.resolve("users", []) == {}
    with pytest.raises(InputError, match="unknown dataset"):
        look.resolve("nope", ["x"])


def test_a_key_of_another_dataset_is_not_a_record_here(loaded: Vault) -> None:
    look = VaultLookup(loaded)
    t1 = _token(loaded, "u00001")
    assert look.live_subjects("users", [t1, "e00000001"]) == {t1: t1}
    assert look.live_subjects("events", [t1]) == {}
    assert look.resolve("events", [t1]) == {}


def test_shredded_subjects_drop_out(loaded: Vault) -> None:
    look = VaultLookup(loaded)
    t1, t2 = _token(loaded, "u00001"), _token(loaded, "u00002")
    loaded.shred("u00001", OPERATOR, "erasure request")
    assert look.resolve("users", ["u00001", "u00002"]) == {"u00002": (t2, t2)}
    assert look.live_subjects("users", [t1, t2]) == {t2: t2}
    # Event e00000003 belonged to user 1 (1 + 3 % 3): gone; e00000001 (user 2) stays.
    assert set(look.resolve("events", ["e00000001", "e00000003"])) == {"e00000001"}
    assert look.tokens(["u00001", "u00002"]) == {"u00002": t2}


def test_lookups_never_need_a_data_key(loaded: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    look = VaultLookup(loaded)
    loaded.identity.load()  # the index key is loaded once per process (it is not a data key)

    def refuse(*_: Any, **__: Any) -> Any:
        raise KeyUnavailable("no key may be unwrapped here")

    monkeypatch.setattr(loaded.provider, "unwrap", refuse)
    t1 = _token(loaded, "u00001")
    assert look.resolve("users", ["u00001"]) == {"u00001": (t1, t1)}
    assert look.live_subjects("events", ["e00000001"])
    assert look.subject_refs(["u00001", "u99999"])


def test_resolve_is_one_read_transaction(loaded: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    look = VaultLookup(loaded)
    loaded.identity.load()
    opened: list[object] = []
    real = loaded.db.transaction

    @contextmanager
    def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        opened.append(kwargs.get("lock"))
        with real(*args, **kwargs) as cur:
            yield cur

    monkeypatch.setattr(loaded.db, "transaction", counted)
    assert len(look.resolve("users", ["u00001", "u00002", "u00003"])) == 3
    assert opened == [None]  # one transaction, and it takes no writer lock


def test_subject_refs_are_keyed_and_never_the_id(loaded: Vault) -> None:
    look = VaultLookup(loaded)
    t1 = _token(loaded, "u00001")
    refs = look.subject_refs(["u00001", "u99999", "u00001"])
    assert refs[0] == refs[2] == look.subject_ref(t1) == look.subject_ref_for_id("u00001")
    assert refs[0] == short_ref(loaded.subject_hash(t1))
    assert refs[0].startswith("hmac-sha256:") and len(refs[0]) == len("hmac-sha256:") + 32
    # An id with no token still gets a keyed ref: not the id, not its token's ref, stable.
    assert refs[1] != refs[0] and "u99999" not in refs[1] and refs[1].startswith("hmac-sha256:")
    assert look.subject_refs(["u99999"]) == [refs[1]]
    assert look.subject_ref_for_id("u99999") is None
    # The ref of an id is not the keyed hash of the id under the token's label.
    assert refs[1] != short_ref(loaded.subject_hash("u99999"))
    assert short_ref("hmac-sha256:" + "ab" * 32) == "hmac-sha256:" + "ab" * 16
