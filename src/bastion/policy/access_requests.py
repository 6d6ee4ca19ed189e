"""Access requests and their N-person decision: open a request, approve it (distinct approvers,
never the requester, each allowed the Cedar ``approve`` action), deny it; the last approval
issues the signed grant, once, however many approvals race for it."""

from __future__ import annotations

from datetime import datetime, timedelta

from bastion.clock import iso, to_unix
from bastion.errors import InputError
from bastion.events import Actor, Approval
from bastion.ledger.api import Receipt
from bastion.policy.approval_model import (
    AccessRequestRecord,
    AccessRequestSpec,
    ApprovalRefused,
    IssuedGrant,
    StepOutcome,
)
from bastion.policy.approval_steps import ApprovalSteps, new_id
from bastion.policy.grants import request_sha256, sign_grant
from bastion.policy.principal import PrincipalAttributes, PrincipalLike
from bastion.policy.vocabulary import MAX_APPROVERS


class RequestSteps(ApprovalSteps):
    # ------------------------------------------------------------------ requesting

    def _check_subjects(self, spec: AccessRequestSpec) -> None:
        """ "Every subject" is never the silent meaning of an empty list: it is asked for."""
        if spec.all_subjects and spec.subjects:
            raise InputError(
                "all_subjects covers every subject: name no subjects with it", field="subjects"
            )
        if not spec.all_subjects and not spec.subjects:
            raise InputError(
                "name the subjects the access is for, or ask for all_subjects (which needs "
                f"{self.config.all_subjects_extra_approvers} more approver(s))",
                field="subjects",
            )

    def approvers_needed(self, policy_count: int, *, all_subjects: bool) -> int:
        """Approvers a request needs: policy's count (at least ``min_approvers``), and for
        every subject ``all_subjects_extra_approvers`` more, at most MAX_APPROVERS."""
        needed = max(self.config.min_approvers, policy_count)
        if all_subjects:
            needed += self.config.all_subjects_extra_approvers
        return min(needed, MAX_APPROVERS)

    def request(self, requester: PrincipalLike, spec: AccessRequestSpec) -> StepOutcome:
        """Open an access request; policy decides how many approvers it needs (more for
        every subject), and the grant may be used ``max_uses`` times."""
        self._check_justification(spec)
        if len(spec.subjects) > self.config.max_subjects:
            raise InputError(f"at most {self.config.max_subjects} subjects", field="subjects")
        max_uses = self._max_uses(spec, self.config.default_max_uses)
        duration = self._duration(
            spec,
            self.config.default_duration,
            self.config.max_duration,
            f"duration exceeds the maximum of {self.config.max_duration}",
        )
        engine = self._engine()
        attrs = engine.attributes(requester)
        fields = self._resolve_fields(spec)  # names first: an unknown one is bad input
        self._check_subjects(spec)
        plan = engine.plan(requester, self._plan_request(spec, fields))
        request_id = new_id("ar")
        hopeless = [f for f in plan.fields if not f.released and not f.needs_approval]
        if hopeless:
            names = ", ".join(f.field for f in hopeless)
            raise self._refuse(
                "denied-by-policy",
                f"no approval can release {names}: {hopeless[0].reason}",
                self._actor(attrs),
                request_id,
            )
        needed = self.approvers_needed(
            plan.approval.approvers if plan.approval else 0, all_subjects=spec.all_subjects
        )
        now = self.clock.now()
        rec = self._new_record(
            request_id,
            "approval",
            attrs,
            spec,
            fields,
            duration,
            needed,
            engine.sha256,
            now,
            max_uses,
        )
        doc = rec.canonical()
        sha = request_sha256(doc)
        event = self._event(
            self._actor(attrs),
            "requested",
            self.public_text.reason("requested", spec.justification_detail),
            None,
            request_id,
            request_sha256=sha,
            dataset=rec.dataset,
            action=rec.action.value,
            fields=list(rec.fields),
            subject_refs=self.refs(rec.subjects),
            justification_type=rec.justification_type.value,
            approvers_required=needed,
            all_subjects=True if rec.all_subjects else None,
            max_uses=rec.max_uses,
        )
        receipt = self.ledger.append(event)
        lapses_unix = to_unix(now + self.config.request_ttl)
        with self.repo.writing() as w:
            w.insert_request(rec, attrs.id, doc, sha, lapses_unix, None, receipt.index)
        return StepOutcome(self.get(request_id), event, receipt)

    def _pending(self, request_id: str, actor: Actor) -> AccessRequestRecord:
        try:
            rec = self.get(request_id)
        except ApprovalRefused:
            raise self._refuse(
                "unknown-request", f"no access request {request_id!r}", actor, request_id
            ) from None
        if rec.status != "pending":
            raise self._refuse(
                "not-pending", f"the request is {rec.status}", actor, request_id, rec
            )
        lapses = datetime.fromisoformat(rec.created_at.replace("Z", "+00:00"))
        if self.clock.now() >= lapses + self.config.request_ttl:
            self._lapse(rec)
            raise ApprovalRefused("lapsed", "the request lapsed before enough approvals")
        return rec

    def _check_approver(
        self, rec: AccessRequestRecord, approver: PrincipalLike
    ) -> PrincipalAttributes:
        attrs = self._attrs(approver)
        if attrs.id == rec.requester.id:
            raise self._refuse(
                "self-approval",
                "a requester can never approve their own request",
                self._actor(attrs),
                rec.id,
                rec,
            )
        self._check_may_approve(approver, attrs, rec, "approver")
        return attrs

    def approve(self, request_id: str, approver: PrincipalLike, reason: str) -> StepOutcome:
        """Add one distinct approval; the N-th one issues the grant."""
        actor = self._actor(self._attrs(approver))
        rec = self._pending(request_id, actor)
        attrs = self._check_approver(rec, approver)
        if attrs.id in rec.approvers and len(rec.approvers) >= rec.approvers_required:
            # Enough approvals, but the grant was never recorded (the ledger failed while
            # granting): an approver may ask again, without counting twice.
            issued = self._issue(rec)
            if issued is not None:
                grant, grant_event, grant_receipt = issued
                return StepOutcome(self.get(rec.id), grant_event, grant_receipt, grant=grant)
        if attrs.id in rec.approvers:
            raise self._refuse(
                "duplicate-approval",
                "approvals must come from distinct approvers",
                actor,
                rec.id,
                rec,
            )
        event = self._event(
            actor,
            "approved",
            self.public_text.reason("approved", reason),
            rec,
            rec.id,
            approvers=[*rec.approvers, attrs.id],
        )
        receipt = self.ledger.append(event)
        with self.repo.writing() as w:
            inserted = w.insert_approval(
                rec.id,
                attrs.id,
                actor.model_dump_json(exclude_none=True),
                # The approver's text as typed (the ledger may carry only its commitment).
                reason.strip() or "approved",
                event.at,
                receipt.index,
            )
            count = w.approval_count(rec.id)
        if not inserted:
            raise ApprovalRefused("duplicate-approval", "this approver already approved")
        updated = self.get(rec.id)
        if count < rec.approvers_required:
            return StepOutcome(updated, event, receipt)
        issued = self._issue(updated)
        if issued is None:  # a concurrent approval is issuing the grant
            return StepOutcome(self.get(rec.id), event, receipt)
        grant, grant_event, grant_receipt = issued
        return StepOutcome(self.get(rec.id), grant_event, grant_receipt, grant=grant)

    def _issue(self, rec: AccessRequestRecord) -> tuple[IssuedGrant, Approval, Receipt] | None:
        """Issue the grant once: claim the request (pending -> granting), record, then store.

        Only the caller that wins the claim appends a "granted" event, so concurrent last
        approvals never leave a second, unusable grant in the ledger. None: another caller
        is issuing (or issued) it.
        """
        with self.repo.writing() as w:
            if not w.move_request(rec.id, "granting", only_from=("pending",)):
                return None
        claims = self._claims(
            rec, "approval", rec.fields, rec.approvers, timedelta(seconds=rec.duration_seconds)
        )
        token = sign_grant(claims, self._key)
        event = self._event(
            self._system_actor(),
            "granted",
            f"{len(rec.approvers)} of {rec.approvers_required} approvals"
            + ("; every subject" if rec.all_subjects else ""),
            rec,
            rec.id,
            grant_id=claims.grant_id,
            expires_at=iso(claims.expires_at),
            approvers=list(rec.approvers),
        )
        try:
            receipt = self.ledger.append(event)  # log before the grant exists
        except BaseException:
            with self.repo.writing() as w:
                w.move_request(rec.id, "pending", only_from=("granting",))
            raise
        with self.repo.writing() as w:
            w.insert_grant(claims, token, receipt.index)
            w.move_request(rec.id, "granted", only_from=("granting",), decided_at=event.at)
        return IssuedGrant(token, claims), event, receipt

    def deny(self, request_id: str, approver: PrincipalLike, reason: str) -> StepOutcome:
        actor = self._actor(self._attrs(approver))
        rec = self._pending(request_id, actor)
        self._check_approver(rec, approver)
        event = self._event(actor, "denied", self.public_text.reason("denied", reason), rec, rec.id)
        receipt = self.ledger.append(event)
        with self.repo.writing() as w:
            w.move_request(rec.id, "denied", only_from=("pending",), decided_at=event.at)
        return StepOutcome(self.get(rec.id), event, receipt)
