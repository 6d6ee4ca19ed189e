"""What the workflows (approvals, tickets) share: a refused step (its kind, a safe detail and
the ledger receipt of the refusal where it was recorded), and the checked subject refs their
events carry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from bastion.errors import BastionError, IntegrityError
from bastion.ledger.api import Receipt

K = TypeVar("K", bound=str)


class StepRefused(BastionError, Generic[K]):
    exit_code = 2

    def __init__(self, kind: K, detail: str, *, receipt: Receipt | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: K = kind
        self.detail = detail
        self.receipt = receipt


def checked_refs(
    subject_refs: Callable[[list[str]], Sequence[str]], subjects: Sequence[str]
) -> list[str]:
    """The keyed refs a workflow event records for these subject ids. Fails closed: a broken
    ref function must not put raw (or missing) ids in the public log."""
    if not subjects:
        return []
    refs = [str(r) for r in subject_refs(list(subjects))]
    if len(refs) != len(subjects) or any(r in subjects for r in refs):
        raise IntegrityError("the subject ref function returned raw or missing refs")
    return refs
