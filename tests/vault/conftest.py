"""Vault fixtures: a vault on each database backend, with the local keyring or a SoftHSM2 token.

The SoftHSM2 fixtures (softhsm_conf, hsm_token) are shared and live in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vault_rows import make_vault

from bastion.clock import FixedClock
from bastion.keys import softhsm
from bastion.keys.local import LocalKeyring
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.keys.provider import KeyProvider
from bastion.store import Database
from bastion.vault import Vault


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def vault(db: Database, clock: FixedClock, keys_dir: Path) -> Iterator[Vault]:
    provider = LocalKeyring.create(keys_dir)
    yield make_vault(db, provider, clock)
    provider.close()


@pytest.fixture(params=["local", "pkcs11"])
def any_vault(
    request: pytest.FixtureRequest, db: Database, clock: FixedClock, keys_dir: Path
) -> Iterator[Vault]:
    """A vault on each backend AND each key provider."""
    provider: KeyProvider
    if request.param == "local":
        provider = LocalKeyring.create(keys_dir)
    else:
        token: softhsm.SoftHsmToken = request.getfixturevalue("hsm_token")
        provider = Pkcs11Provider.create(token.library, token.label, token.pin, keys_dir)
    yield make_vault(db, provider, clock)
    provider.close()


@pytest.fixture
def recorded() -> Callable[..., object]:
    """Build a RecordedPlan bound to an allowing access decision that lists exactly its pairs,
    with a stand-in receipt for that entry (the gateway's come from the ledger)."""
    from bastion.events import AccessDecision, Actor, FieldRelease, encode_event
    from bastion.ledger.api import Receipt
    from bastion.vault import ReadPlan, RecordedPlan
    from bastion.vault.plan import leaf_hash

    counter = iter(range(1, 1_000_000))

    def build(dataset: str, pairs: list[tuple[str, str]]) -> RecordedPlan:
        entry = encode_event(
            AccessDecision(
                actor=Actor(id="vault-tests", kind="operator"),
                reason="vault test",
                at="2026-01-01T00:00:00Z",
                request_id="vault-test",
                action="read",
                dataset=dataset,
                decision="allow",
                released=[
                    FieldRelease(dataset=dataset, record=r, field=f, transform="clear")
                    for r, f in pairs
                ],
            )
        )
        receipt = Receipt(next(counter), leaf_hash(entry))
        return RecordedPlan.bind(ReadPlan.of(dataset, pairs), receipt, entry)

    return build
