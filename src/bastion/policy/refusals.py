"""A refused workflow step (approvals, tickets): its kind, a safe detail, and the ledger
receipt of the refusal where it was recorded."""

from __future__ import annotations

from typing import Generic, TypeVar

from bastion.errors import BastionError
from bastion.ledger.api import Receipt

K = TypeVar("K", bound=str)


class StepRefused(BastionError, Generic[K]):
    exit_code = 2

    def __init__(self, kind: K, detail: str, *, receipt: Receipt | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: K = kind
        self.detail = detail
        self.receipt = receipt
