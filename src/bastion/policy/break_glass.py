"""Break-glass: immediate, short access for an emergency, with a mandatory justification. It
is granted only where policy lets break-glass open something an ordinary request would not,
raises an alert, and opens a review that someone else must close (``reviews``)."""

from __future__ import annotations

from bastion.clock import iso, to_unix
from bastion.errors import InputError
from bastion.policy.approval_model import (
    AccessRequestRecord,
    AccessRequestSpec,
    BreakGlassAlert,
    IssuedGrant,
    StepOutcome,
)
from bastion.policy.approval_steps import ApprovalSteps, new_id
from bastion.policy.grants import request_sha256, sign_grant
from bastion.policy.plan import GrantScope
from bastion.policy.principal import PrincipalLike


class BreakGlassSteps(ApprovalSteps):
    def break_glass(self, principal: PrincipalLike, spec: AccessRequestSpec) -> StepOutcome:
        """Immediate, short access for an emergency: alert now, review afterwards."""
        self._check_justification(spec)
        if spec.justification_type not in self.config.break_glass_justifications:
            allowed = ", ".join(sorted(j.value for j in self.config.break_glass_justifications))
            raise InputError(
                f"break-glass needs a justification of type {allowed}", field="justification_type"
            )
        if not spec.subjects or spec.all_subjects:
            raise InputError("break-glass must name the subjects it needs", field="subjects")
        if len(spec.subjects) > self.config.break_glass_max_subjects:
            raise InputError(
                f"break-glass covers at most {self.config.break_glass_max_subjects} subjects",
                field="subjects",
            )
        max_uses = self._max_uses(spec, self.config.break_glass_default_uses)
        duration = self._duration(
            spec,
            self.config.break_glass_default_duration,
            self.config.break_glass_max_duration,
            f"break-glass lasts at most {self.config.break_glass_max_duration}",
        )
        engine = self._engine()
        attrs = engine.attributes(principal)
        fields = self._resolve_fields(spec)
        request_id = new_id("bg")
        # Ask policy what a break-glass session would release for this caller.
        probe = GrantScope(
            grant_id="break-glass-probe",
            kind="break-glass",
            dataset=spec.dataset,
            action=spec.action,
            fields=frozenset(fields),
            subjects=frozenset(spec.subjects),
            approvals=0,
            justification=spec.justification_type,
        )
        plan_request = self._plan_request(spec, fields)
        plan = engine.plan(principal, plan_request, grant=probe)
        normal = engine.plan(principal, plan_request)
        released = tuple(f for f in fields if plan.field(f).released)
        # Breaking the glass must be what opens something; otherwise it is not an emergency
        # access but an ordinary one, and must not raise alerts or skip approvals.
        gained = [
            f
            for f in released
            if not normal.field(f).released
            or normal.field(f).transform is not plan.field(f).transform
        ]
        if not gained:
            raise self._refuse(
                "not-permitted",
                "policy allows this principal no break-glass access here",
                self._actor(attrs),
                request_id,
            )
        now = self.clock.now()
        rec = self._new_record(
            request_id,
            "break-glass",
            attrs,
            spec,
            released,
            duration,
            0,
            engine.sha256,
            now,
            max_uses,
        )
        doc = rec.canonical()
        sha = request_sha256(doc)
        rec = AccessRequestRecord(**{**rec.__dict__, "request_sha256": sha})
        claims = self._claims(rec, "break-glass", released, (), duration)
        token = sign_grant(claims, self._key)
        review_id = new_id("rv")
        due = now + self.config.review_within
        event = self._event(
            self._actor(attrs),
            "break-glass",
            self.public_text.reason("break-glass", spec.justification_detail),
            rec,
            rec.id,
            grant_id=claims.grant_id,
            expires_at=iso(claims.expires_at),
            review_id=review_id,
            alert=True,
        )
        receipt = self.ledger.append(event)
        with self.repo.writing() as w:
            w.insert_request(rec, attrs.id, doc, sha, to_unix(now), rec.created_at, receipt.index)
            w.insert_grant(claims, token, receipt.index)
            w.insert_review(
                review_id, rec.id, claims.grant_id, attrs.id, rec.created_at, iso(due), to_unix(due)
            )
        self._alert(
            BreakGlassAlert(
                request_id=rec.id,
                grant_id=claims.grant_id,
                review_id=review_id,
                principal=attrs.actor(),
                dataset=rec.dataset,
                fields=released,
                subjects=rec.subjects,
                justification_type=spec.justification_type,
                justification_detail=spec.justification_detail,
                expires_at=iso(claims.expires_at),
                ledger_index=receipt.index,
            )
        )
        return StepOutcome(
            self.get(rec.id), event, receipt, grant=IssuedGrant(token, claims), review_id=review_id
        )

    def _alert(self, alert: BreakGlassAlert) -> None:
        self.counters.break_glass += 1
        for hook in self.alert_hooks:
            try:
                hook(alert)
            except Exception:  # an alert channel being down must not undo the record
                self.counters.alert_hook_failures += 1
