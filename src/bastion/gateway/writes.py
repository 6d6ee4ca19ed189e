"""The write path: every write passes the gate, and is recorded in the commit that stores it.

Named stages, top to bottom (as ``Gate.release`` reads for reads):

1. **replay**: an ``Idempotency-Key`` seen before returns its first answer, without writing
   or recording again; the same key with another body is refused.
2. **stage**: the vault validates and seals the values (``VaultWrites.stage``); bad input
   is a recorded 4xx naming the record and field.
3. **decide**: Cedar decides ``write`` (or ``delete``) on every field written; a data subject
   writes only their own records. A denial is recorded and answered 403.
4. **commit**: one ``data.write`` entry, appended with the write itself as its side write:
   data, versions, change-feed rows and the idempotency row commit with the entry, or
   nothing does. A write the vault then refuses (stale version, duplicate, erased subject)
   is recorded as a refusal instead.
5. **respond**: the new versions and the pseudonym tokens of interoperable identifiers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bastion.clock import iso
from bastion.errors import InputError
from bastion.events import AccessDecision, DataWrite, RecordWrite, encode_event
from bastion.gateway.auth import Principal
from bastion.gateway.bulk_commits import SideWriteFailed, guarded
from bastion.gateway.errors import ApiError, ReceiptOut
from bastion.gateway.models import WriteOut, WrittenOut
from bastion.gateway.recording import receipt_out, record
from bastion.gateway.refusals import input_error_kind, reject
from bastion.gateway.runtime import Runtime
from bastion.ledger import merkle
from bastion.policy import Action
from bastion.store import Cursor
from bastion.vault.idempotency import IdempotencyStore
from bastion.vault.writes import StagedWrite, VaultWrites, WriteOp, WriteRefused, WrittenRecord

# RFC-draft "Idempotency-Key": an opaque string; printable ASCII keeps it out of harm's way.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_STATUS_KIND = {
    404: "no-such-record",
    409: "duplicate-record",
    410: "subject-erased",
    412: "stale-version",
}


@dataclass(frozen=True)
class WriteRequest:
    dataset: str
    op: WriteOp
    records: Sequence[Mapping[str, object]]
    request_id: str
    endpoint: str
    body_sha256: str
    record_id: str | None = None
    if_match: int | None = None
    idempotency_key: str | None = None


def body_digest(method: str, path: str, body: object) -> str:
    """What an idempotency key is bound to: the method, the path and the JSON body."""
    text = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: "3"`` (or ``3``) -> 3; anything else is a 400 naming the header."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, "bad-if-match", 'If-Match must be a record version, e.g. "3"')
    return int(text)


class WriteGate:
    """The write path of one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.writes = VaultWrites(rt.vault)
        self.answers = IdempotencyStore(rt.db)

    def write(self, principal: Principal, request: WriteRequest) -> WriteOut:
        self._check_key(principal, request)
        replayed = self._replay(principal, request)
        if replayed is not None:
            return replayed
        staged = self._stage(principal, request)
        decision = self._decide(principal, request, staged)
        return self._commit(principal, request, staged, decision)

    # -- 1. replay ---------------------------------------------------------------------------

    def _check_key(self, principal: Principal, request: WriteRequest) -> None:
        key = request.idempotency_key
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise self._reject(
                principal,
                request,
                400,
                "bad-idempotency-key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        if not self.rt.ledger.storage.side_writes_in_commit:
            # A files-backed log commits its entries apart from the database, so the write
            # and its entry could not be made durable together: refuse rather than risk an
            # acknowledged write without its entry.
            raise ApiError(
                503,
                "writes-unavailable",
                'writes need the database ledger storage ([ledger] storage = "database")',
            )

    def _replay(self, principal: Principal, request: WriteRequest) -> WriteOut | None:
        if request.idempotency_key is None:
            return None
        found = self.answers.find(principal.id, request.idempotency_key)
        if found is None:
            return None
        digest, response = found.request_sha256, found.response
        if digest != request.body_sha256:
            raise self._reject(
                principal,
                request,
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was used with a different request",
            )
        out = WriteOut.model_validate_json(str(response))
        return out.model_copy(update={"replayed": True})

    # -- 2. stage ----------------------------------------------------------------------------

    def _stage(self, principal: Principal, request: WriteRequest) -> StagedWrite:
        limit = self.rt.config.max_write_batch
        if len(request.records) > limit:
            raise self._reject(
                principal,
                request,
                413,
                "batch-too-large",
                f"at most {limit} records per write",
                dataset=request.dataset,
                field="records",
            )
        try:
            return self.writes.stage(
                request.dataset,
                request.op,
                request.records,
                record_id=request.record_id,
                expected_version=request.if_match,
            )
        except WriteRefused as exc:
            raise self._refused(principal, request, exc) from None
        except InputError as exc:
            status, kind = input_error_kind(exc)
            raise self._reject(
                principal,
                request,
                status,
                kind,
                str(exc),
                dataset=request.dataset,
                field=exc.field,
            ) from None

    # -- 3. decide ---------------------------------------------------------------------------

    def _decide(
        self, principal: Principal, request: WriteRequest, staged: StagedWrite
    ) -> tuple[str, ...]:
        rt = self.rt
        action = Action.DELETE if staged.op is WriteOp.DELETE else Action.WRITE
        self._check_registered_datasets(principal, request, staged.dataset, action)
        fields = sorted({f for r in staged.records for f in r.fields})
        decision = rt.engine().decide_write(principal, staged.dataset, fields, action)
        reason = decision.reason
        allowed = decision.allowed
        if allowed and principal.is_subject:
            # A person corrects their own records only: the record's subject must be the
            # token of the id their token names (Cedar cannot see whose record it is).
            subject_id = rt.engine().attributes(principal).subject_id
            own = rt.lookup.tokens([subject_id]).get(subject_id) if subject_id else None
            if own is None or any(r.subject != own for r in staged.records):
                allowed, reason = False, "a data subject writes only their own records"
        if allowed:
            return decision.policy_ids
        raise self._denied(
            principal,
            request,
            action,
            staged.dataset,
            reason,
            f"policy denies this write: {reason}",
            policies=decision.policy_ids,
            policy_sha256=decision.policy_sha256,
            subjects=sorted({rt.subject_ref(r.subject) for r in staged.records}),
            detail={"denied_fields": list(decision.denied)},
        )

    def _check_registered_datasets(
        self, principal: Principal, request: WriteRequest, dataset: str, action: Action
    ) -> None:
        """A service writes only the datasets its registry entry lists (when it lists any):
        a second, operator-held allow-list under the policy's."""
        if principal.role != "service":
            return
        entry = self.rt.registry.entry(principal.issuer, principal.sub or principal.id)
        if entry is None or entry.datasets is None or dataset in entry.datasets:
            return
        reason = "the service is not registered for this dataset"
        raise self._denied(principal, request, action, dataset, reason, reason)

    def _denied(
        self,
        principal: Principal,
        request: WriteRequest,
        action: Action,
        dataset: str,
        reason: str,
        message: str,
        *,
        policies: Sequence[str] = (),
        policy_sha256: str | None = None,
        subjects: Sequence[str] = (),
        detail: dict[str, Any] | None = None,
    ) -> ApiError:
        """Record a denied write (an access decision, before anything is written) and return
        the 403 that names its receipt."""
        rt = self.rt
        event = AccessDecision(
            actor=principal.actor(),
            reason="write",
            at=iso(rt.clock.now()),
            request_id=request.request_id,
            action=action.value,
            dataset=dataset,
            decision="deny",
            policies=list(policies),
            subjects=list(subjects),
            denied_reason=reason[:4096],
            policy_sha256=policy_sha256,
        )
        (receipt,) = record(rt, [event])
        rt.metrics.decisions.labels(action.value, "deny").inc()
        err = ApiError(403, "denied", message, detail=detail)
        err.receipt = receipt_out(receipt)
        err.request_id = request.request_id
        return err

    # -- 4. commit ---------------------------------------------------------------------------

    def _commit(
        self,
        principal: Principal,
        request: WriteRequest,
        staged: StagedWrite,
        policies: tuple[str, ...],
    ) -> WriteOut:
        rt = self.rt
        versions = self.writes.expected_versions(staged)
        # One keyed hash per subject, not per record (a batch has many records per subject).
        refs = {s: rt.subject_ref(s) for s in {r.subject for r in staged.records}}
        event = DataWrite(
            actor=principal.actor(),
            reason=f"{staged.op.value} {staged.dataset}",
            at=iso(rt.clock.now()),
            request_id=request.request_id,
            dataset=staged.dataset,
            op=staged.op.value,
            records=[
                # Record keys are record ids or pseudonym tokens (for a pseudonymized id).
                RecordWrite(record=r.record_key, version=v, subject=refs[r.subject])
                for r, v in zip(staged.records, versions, strict=True)
            ],
            fields=sorted({f for r in staged.records for f in r.fields}),
            content_commitment=staged.commitment,
            policies=list(policies),
            policy_sha256=rt.engine().sha256,
            idempotency_key_sha256=(
                hashlib.sha256(request.idempotency_key.encode()).hexdigest()
                if request.idempotency_key
                else None
            ),
        )
        entry = encode_event(event)
        leaf = merkle.leaf_hash(entry).hex()
        done: list[WrittenRecord] = []

        def side_write(cur: Cursor) -> None:
            written = self.writes.apply(cur, staged)
            if [w.version for w in written] != versions:
                # Another write committed between staging and now: the entry would name the
                # wrong versions, so this one is refused as stale (the client retries).
                raise WriteRefused(412, "the record changed while this write was staged")
            done[:] = written
            if request.idempotency_key is not None:
                self.answers.insert(
                    cur,
                    principal.id,
                    request.idempotency_key,
                    request.body_sha256,
                    self._out(request, staged, written, leaf, None).model_dump_json(),
                    iso(rt.clock.now()),
                )

        try:
            (receipt,) = rt.writer.append_entries([entry], side_write=guarded(side_write))
        except SideWriteFailed as failed:
            error = failed.error
            if isinstance(error, WriteRefused):
                raise self._refused(principal, request, error) from None
            if rt.db.is_unique_violation(error):
                # The same key, committed by a concurrent retry: answer as that one did.
                replay = self._replay(principal, request)
                if replay is not None:
                    return replay
            raise ApiError(503, "vault-unavailable", "the write could not be stored") from None
        except Exception:
            rt.metrics.ledger_failures.inc()
            raise ApiError(
                503,
                "ledger-unavailable",
                "the ledger could not record this write, so nothing was written",
            ) from None
        out = self._out(request, staged, done, leaf, receipt_out(receipt))
        if request.idempotency_key is not None:
            # The first answer gains its receipt (the side write could not know the index).
            self.answers.complete(principal.id, request.idempotency_key, out.model_dump_json())
        rt.metrics.decisions.labels(
            "delete" if staged.op is WriteOp.DELETE else "write", "allow"
        ).inc()
        return out

    # -- 5. respond --------------------------------------------------------------------------

    def _out(
        self,
        request: WriteRequest,
        staged: StagedWrite,
        written: Sequence[WrittenRecord],
        leaf: str,
        receipt: ReceiptOut | None,
    ) -> WriteOut:
        return WriteOut(
            request_id=request.request_id,
            dataset=staged.dataset,
            op=staged.op.value,
            records=[
                WrittenOut(
                    record_id=w.record_id,
                    version=w.version,
                    created=w.created,
                    tokens=dict(r.tokens),
                )
                for w, r in zip(written, staged.records, strict=True)
            ],
            leaf_hash=leaf,
            receipt=receipt,
        )

    # -- refusals ----------------------------------------------------------------------------

    def _refused(self, principal: Principal, request: WriteRequest, exc: WriteRefused) -> ApiError:
        return self._reject(
            principal,
            request,
            exc.status,
            _STATUS_KIND.get(exc.status, "refused"),
            str(exc),
            dataset=request.dataset,
            field=exc.field,
        )

    def _reject(
        self,
        principal: Principal,
        request: WriteRequest,
        status: int,
        kind: str,
        message: str,
        *,
        dataset: str | None = None,
        field: str | None = None,
    ) -> ApiError:
        return reject(
            self.rt,
            principal.actor(),
            request_id=request.request_id,
            endpoint=request.endpoint,
            status=status,
            kind=kind,
            message=message,
            dataset=dataset,
            field=field,
        )
