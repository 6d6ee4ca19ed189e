"""Fixtures for the egress tests: the real witnessed log (``tests/witnessed_log.py``, shared
with the release tests), a custodian signing key and a recipient's X25519 key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.ledger.log import Log
from witnessed_log import RunningWitness, real_log, witness_servers

from .builders import Custodian

# Re-exported so pytest finds the shared fixtures here.
__all__ = ["RunningWitness", "real_log", "witness_servers"]


@pytest.fixture
def recipient_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def custodian(real_log: Log, recipient_key: X25519PrivateKey) -> Custodian:
    return Custodian(real_log, Ed25519PrivateKey.generate(), recipient_key)
