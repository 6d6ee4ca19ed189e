"""Key-provider fixtures: provider tests run on the local keyring AND a real SoftHSM2 token
(`hsm_token`, from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.keys import softhsm
from bastion.keys.local import LocalKeyring
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.keys.provider import KeyProvider


@pytest.fixture(params=["local", "pkcs11"])
def provider_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def provider(
    provider_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[KeyProvider]:
    keys_dir = tmp_path / "keys"
    p: KeyProvider
    if provider_kind == "local":
        p = LocalKeyring.create(keys_dir)
    else:
        token: softhsm.SoftHsmToken = request.getfixturevalue("hsm_token")
        p = Pkcs11Provider.create(token.library, token.label, token.pin, keys_dir)
    yield p
    p.close()
