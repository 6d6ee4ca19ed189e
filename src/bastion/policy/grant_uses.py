"""Grants in use: check a presented grant token, count its uses (never more than ``max_uses``,
never the same use twice), revoke it, and record in the ledger every grant that expired and
every request that lapsed."""

from __future__ import annotations

from collections.abc import Sequence

from bastion.clock import iso, to_unix
from bastion.events import Approval
from bastion.policy.approval_model import StepOutcome
from bastion.policy.approval_steps import ApprovalSteps
from bastion.policy.grants import (
    GrantRejected,
    request_sha256,
    token_sha256,
    verify_grant_token,
)
from bastion.policy.plan import GrantScope
from bastion.policy.principal import PrincipalLike
from bastion.policy.vocabulary import Action, JustificationType


class GrantSteps(ApprovalSteps):
    def grant_token(self, grant_id: str) -> str:
        row = self.repo.grant(grant_id)
        if row is None:
            raise GrantRejected("unknown-grant", f"no grant {grant_id!r}")
        return row.token

    def verify(
        self,
        token: str,
        principal: PrincipalLike,
        *,
        dataset: str,
        action: Action,
        fields: Sequence[str] | None = None,
        use_id: str | None = None,
    ) -> GrantScope:
        """Check a presented grant for this principal and request; raise GrantRejected.

        ``use_id`` (the caller's request id) also counts one use (see :meth:`use`); the
        gateway checks first and counts only when something is about to be released under
        the grant. ``fields`` None means "whatever the grant covers".
        """
        claims = verify_grant_token(token, self.public_key)
        row = self.repo.grant(claims.grant_id)
        if row is None or row.token_sha256 != token_sha256(token):
            raise GrantRejected("unknown-grant", "this grant was never issued here")
        rec = self.get(claims.request_id)
        if request_sha256(rec.canonical()) != claims.request_sha256:
            raise GrantRejected("request-mismatch", "the grant is not bound to this request")
        if rec.status not in ("granted", "break-glass"):
            raise GrantRejected("revoked", f"the request is {rec.status}")
        now = self.clock.now()
        if now < claims.issued_at:
            raise GrantRejected("not-yet-valid", "the grant is not valid yet")
        if now >= claims.expires_at:
            raise GrantRejected("expired", f"the grant expired at {iso(claims.expires_at)}")
        if row.revoked_at is not None:
            raise GrantRejected("revoked", f"the grant was revoked at {row.revoked_at}")
        if self._attrs(principal).id != claims.principal:
            raise GrantRejected("wrong-principal", "the grant was issued to someone else")
        wanted = claims.fields if fields is None else tuple(fields)
        if not claims.covers(dataset, action.value, wanted):
            raise GrantRejected(
                "out-of-scope", "the grant does not cover this dataset, action or field"
            )
        scope = GrantScope(
            grant_id=claims.grant_id,
            kind=claims.kind,
            dataset=claims.dataset,
            action=Action(claims.action),
            fields=frozenset(claims.fields),
            subjects=frozenset(claims.subjects),
            approvals=len(set(claims.approvers)),
            justification=JustificationType(claims.justification),
            # From the stored request, which the grant's hash binds (checked above).
            all_subjects=rec.all_subjects,
            max_uses=rec.max_uses,
        )
        if use_id is not None:
            self.use(scope, use_id)
        return scope

    def use(self, scope: GrantScope, use_id: str) -> int:
        """Count one use of a verified grant; returns how many it has had, this one included.

        The check and the count are one transaction under the approvals lock (SQLite's write
        lock, PostgreSQL's advisory lock), so concurrent uses on any number of gateways over
        one database never exceed ``max_uses``. Refused: ``replayed`` when this use id was
        presented before, ``exhausted`` when every allowed use is spent (nothing counted)."""
        with self.repo.writing() as w:
            if w.use_seen(scope.grant_id, use_id):
                raise GrantRejected("replayed", "this grant use was already presented")
            used = w.use_count(scope.grant_id)
            if scope.max_uses is not None and used >= scope.max_uses:
                raise GrantRejected(
                    "exhausted",
                    f"the grant allows {scope.max_uses} use(s) and all were used",
                )
            if not w.insert_use(scope.grant_id, use_id, iso(self.clock.now())):
                raise GrantRejected("replayed", "this grant use was already presented")
        return used + 1

    def revoke(self, grant_id: str, actor: PrincipalLike, reason: str) -> StepOutcome:
        """Revoke a grant. Approvers may revoke any grant; a holder may give up their own."""
        attrs = self._attrs(actor)
        row = self.repo.grant(grant_id)
        if row is None:
            raise self._refuse(
                "unknown-grant", f"no grant {grant_id!r}", self._actor(attrs), grant_id
            )
        rec = self.get(row.request_id)
        if row.revoked_at is not None or to_unix(self.clock.now()) >= row.expires_unix:
            raise self._refuse(
                "not-active",
                "the grant is already revoked or expired",
                self._actor(attrs),
                rec.id,
                rec,
            )
        if attrs.id != row.principal_id:
            self._check_may_approve(actor, attrs, rec, "revoker")
        event = self._event(
            self._actor(attrs),
            "revoked",
            self.public_text.reason("revoked", reason),
            rec,
            rec.id,
            grant_id=grant_id,
        )
        receipt = self.ledger.append(event)
        with self.repo.writing() as w:
            w.revoke_grant(grant_id, event.at, attrs.id)
        return StepOutcome(self.get(rec.id), event, receipt)

    def expire_due(self) -> list[Approval]:
        """Record in the ledger every grant that has expired and every request that lapsed."""
        now = self.clock.now()
        events: list[Approval] = []
        for grant in self.repo.grants_due_to_expire(to_unix(now)):
            rec = self.get(grant.request_id)
            event = self._event(
                self._system_actor(),
                "expired",
                "the grant reached its expiry",
                rec,
                rec.id,
                grant_id=grant.id,
                expires_at=grant.expires_at,
            )
            self.ledger.append(event)
            with self.repo.writing() as w:
                w.mark_expiry_recorded(grant.id)
            events.append(event)
        for request_id in self.repo.lapsed_request_ids(to_unix(now)):
            events.append(self._lapse(self.get(request_id)))
        return events
