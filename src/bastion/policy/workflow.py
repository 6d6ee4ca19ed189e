"""What the workflows (approvals, tickets) share: a refused step (its kind, a safe detail and
the ledger receipt of the refusal where it was recorded), the checked subject refs their
events carry, the check on the lists of ids their requests name, and the two functions
each service is handed (the current policy engine, the subject-ref function)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from bastion.errors import BastionError, IntegrityError
from bastion.ledger.api import Receipt
from bastion.policy.engine import PolicyEngine

K = TypeVar("K", bound=str)

# The policy engine in force now (it changes when a new policy set loads).
EngineSource = Callable[[], PolicyEngine]
# Subject ids -> the keyed refs the ledger carries, one per id and in order; never an id.
SubjectRefs = Callable[[Sequence[str]], Sequence[str]]


class StepRefused(BastionError, Generic[K]):
    exit_code = 2

    def __init__(self, kind: K, detail: str, *, receipt: Receipt | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: K = kind
        self.detail = detail
        self.receipt = receipt


def checked_refs(subject_refs: SubjectRefs, subjects: Sequence[str]) -> list[str]:
    """The keyed refs a workflow event records for these subject ids. Fails closed: a broken
    ref function must not put raw (or missing) ids in the public log."""
    if not subjects:
        return []
    refs = [str(r) for r in subject_refs(list(subjects))]
    if len(refs) != len(subjects) or any(r in subjects for r in refs):
        raise IntegrityError("the subject ref function returned raw or missing refs")
    return refs


def distinct_values(values: tuple[str, ...]) -> tuple[str, ...]:
    """A list of ids a request names (subjects, fields, assignees): no repeats, each 1 to 256
    characters. For pydantic validators: the errors are ``ValueError``s."""
    if len(set(values)) != len(values):
        raise ValueError("must not repeat a value")
    if any(not s or len(s) > 256 for s in values):
        raise ValueError("values must be 1 to 256 characters")
    return values
