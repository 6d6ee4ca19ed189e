"""What release assurance needs from the ledger, as one protocol.

Approvals append to the log (``LedgerWriter``); evidence needs a published, cosigned
checkpoint and proofs (``ProofSource``); trust bundles need the log's vkey and the witnesses'.
``bastion.releases`` depends on this protocol, never on the log's implementation; the adapter
over the real ``bastion.ledger.log.Log`` is ``LogLink``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from bastion.ledger.api import Receipt


class ReleaseLedger(Protocol):
    @property
    def origin(self) -> str: ...

    @property
    def vkey(self) -> str:
        """The log's C2SP signed-note verifier key."""
        ...

    @property
    def witness_vkeys(self) -> Sequence[str]: ...

    @property
    def witness_quorum(self) -> int: ...

    def append(self, event: BaseModel) -> Receipt: ...

    def append_many(self, events: Sequence[BaseModel]) -> list[Receipt]: ...

    def publish_checkpoint(self) -> None:
        """Sign the current tree and gather witness cosignatures (blocking)."""
        ...

    def checkpoint_note(self) -> str: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...
