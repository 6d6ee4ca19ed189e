"""What release assurance needs from the ledger, as one protocol.

Approvals append to the log (``LedgerWriter``); evidence needs a published, witness-cosigned
checkpoint and proofs; trust bundles need the log's vkey and the witnesses' vkeys and quorum.
``bastion.ledger.log.Log`` satisfies it as it is; releases code depends only on this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bastion.ledger.anchors import log_anchors
from bastion.ledger.api import LedgerWriter
from bastion.ledger.publish import WitnessEndpoint


class ReleaseLedger(LedgerWriter, Protocol):
    @property
    def origin(self) -> str: ...

    @property
    def vkey(self) -> str:
        """The log's C2SP signed-note verifier key."""
        ...

    @property
    def witnesses(self) -> Sequence[WitnessEndpoint]: ...

    @property
    def quorum(self) -> int:
        """Distinct witness cosignatures a published checkpoint must carry."""
        ...

    def publish(self) -> object:
        """Sign the current tree and gather witness cosignatures now (blocking)."""
        ...

    def checkpoint_note(self) -> str:
        """The newest published checkpoint carrying the quorum of cosignatures."""
        ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...


def witness_vkeys(ledger: ReleaseLedger) -> list[str]:
    return [w.vkey for w in log_anchors(ledger).witnesses]
