"""Post-hoc reviews of break-glass: due within ``review_within``, closed as justified or
unjustified by someone other than the person who broke the glass and allowed to approve
access; an unjustified outcome raises an alert."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from bastion.clock import to_unix
from bastion.errors import InputError
from bastion.policy.approval_model import Review, StepOutcome
from bastion.policy.approval_steps import ApprovalSteps
from bastion.policy.principal import PrincipalLike


class ReviewSteps(ApprovalSteps):
    def reviews(self, *, status: str | None = None, limit: int = 100) -> list[Review]:
        return self.repo.reviews(status=status, limit=limit)

    def overdue_reviews(self) -> list[Review]:
        now = to_unix(self.clock.now())
        return [
            r
            for r in self.reviews(status="pending", limit=10_000)
            if to_unix(datetime.fromisoformat(r.due_at.replace("Z", "+00:00"))) <= now
        ]

    def review(
        self,
        review_id: str,
        reviewer: PrincipalLike,
        outcome: Literal["justified", "unjustified"],
        notes: str,
    ) -> StepOutcome:
        """Close a break-glass review. Someone other than the person who broke the glass,
        allowed to approve access, must do it."""
        attrs = self._attrs(reviewer)
        found = self.repo.review(review_id)
        if found is None:
            raise self._refuse(
                "unknown-review", f"no review {review_id!r}", self._actor(attrs), review_id
            )
        rec = self.get(found.request_id)
        if found.status != "pending":
            raise self._refuse(
                "already-reviewed", f"the review is {found.status}", self._actor(attrs), rec.id, rec
            )
        if attrs.id == found.principal_id:
            raise self._refuse(
                "self-review",
                "nobody reviews their own break-glass",
                self._actor(attrs),
                rec.id,
                rec,
            )
        self._check_may_approve(reviewer, attrs, rec, "reviewer")
        if not notes.strip():
            raise InputError("a review needs notes", field="notes")
        event = self._event(
            self._actor(attrs),
            "reviewed",
            # The outcome is a word from a closed set (clear); the notes are typed text.
            self.public_text.reason(outcome, notes, published=f"{outcome}: {notes.strip()}"),
            rec,
            rec.id,
            review_id=review_id,
            alert=outcome == "unjustified",
        )
        receipt = self.ledger.append(event)
        with self.repo.writing() as w:
            w.close_review(review_id, outcome, attrs.id, event.at, notes.strip())
        return StepOutcome(rec, event, receipt, review_id=review_id)
