"""The approval workflow's tables, and the one repository every step reads and writes through.

Each table row is a frozen dataclass whose fields are the columns, in order: the SELECT is
written from the dataclass (``policy/rows.py``), so a row is built in one place and a query cannot
fall out of step with the type that holds its result. Writes go through ``ApprovalWrites``,
which exists only inside ``ApprovalRepository.writing()``: one transaction under the
approvals lock (SQLite's write lock, PostgreSQL's advisory lock), so concurrent steps on any
number of gateways over one database see each other's claims and counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bastion.clock import iso, to_unix
from bastion.policy.approval_model import AccessRequestRecord, RequestStatus, Review
from bastion.policy.freetext import FREE_TEXT_DDL
from bastion.policy.grants import GrantClaims, token_sha256
from bastion.policy.rows import R, select
from bastion.store import Cursor, Database

APPROVALS_DDL = [
    """CREATE TABLE IF NOT EXISTS access_requests (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        requester_id TEXT NOT NULL,
        canonical TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        dataset TEXT NOT NULL,
        approvers_required {int} NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        lapses_unix {int} NOT NULL,
        decided_at TEXT,
        ledger_index {int} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS access_requests_status ON access_requests (status, lapses_unix)",
    """CREATE TABLE IF NOT EXISTS access_approvals (
        request_id TEXT NOT NULL,
        approver_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        reason TEXT NOT NULL,
        approved_at TEXT NOT NULL,
        ledger_index {int} NOT NULL,
        PRIMARY KEY (request_id, approver_id)
    )""",
    """CREATE TABLE IF NOT EXISTS access_grants (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        token TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        expires_unix {int} NOT NULL,
        revoked_at TEXT,
        revoked_by TEXT,
        expiry_recorded {int} NOT NULL DEFAULT 0,
        ledger_index {int} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS access_grants_request ON access_grants (request_id)",
    "CREATE INDEX IF NOT EXISTS access_grants_expiry "
    "ON access_grants (expiry_recorded, expires_unix)",
    """CREATE TABLE IF NOT EXISTS access_grant_uses (
        grant_id TEXT NOT NULL,
        use_id TEXT NOT NULL,
        used_at TEXT NOT NULL,
        PRIMARY KEY (grant_id, use_id)
    )""",
    """CREATE TABLE IF NOT EXISTS break_glass_reviews (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        due_at TEXT NOT NULL,
        due_unix {int} NOT NULL,
        reviewer_id TEXT,
        reviewed_at TEXT,
        notes TEXT
    )""",
    # Typed text the (public) ledger carries only as a commitment (``policy/freetext.py``).
    *FREE_TEXT_DDL,
]

_LOCK = "access-approvals"


def migrate_approvals(db: Database) -> None:
    db.migrate("approvals", APPROVALS_DDL)


@dataclass(frozen=True)
class RequestRow:
    """``access_requests`` as a step reads it: the canonical request and its hash."""

    id: str
    kind: Literal["approval", "break-glass"]
    canonical: str
    request_sha256: str
    status: RequestStatus
    ledger_index: int


@dataclass(frozen=True)
class GrantRow:
    """``access_grants``: an issued grant, its token and whether it still stands."""

    id: str
    request_id: str
    kind: Literal["approval", "break-glass"]
    principal_id: str
    token: str
    token_sha256: str
    expires_at: str
    expires_unix: int
    revoked_at: str | None


class ApprovalRepository:
    """Reads of the approval tables (each its own statement) and ``writing()`` transactions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _rows(self, row_type: type[R], tail: str, params: Sequence[Any] = ()) -> list[R]:
        return select(self.db, row_type, tail, params)

    @contextmanager
    def writing(self) -> Iterator[ApprovalWrites]:
        with self.db.transaction(lock=_LOCK) as cur:
            yield ApprovalWrites(cur)

    # ------------------------------------------------------------------ requests

    def request(self, request_id: str) -> RequestRow | None:
        rows = self._rows(RequestRow, "FROM access_requests WHERE id = ?", (request_id,))
        return rows[0] if rows else None

    def requests(
        self, *, status: str | None, requester_id: str | None, limit: int
    ) -> list[RequestRow]:
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if requester_id:
            where.append("requester_id = ?")
            params.append(requester_id)
        tail = "FROM access_requests"
        if where:
            tail += " WHERE " + " AND ".join(where)
        params.append(limit)
        return self._rows(RequestRow, tail + " ORDER BY created_at DESC, id LIMIT ?", params)

    def approver_ids(self, request_id: str) -> tuple[str, ...]:
        rows = self.db.query(
            "SELECT approver_id FROM access_approvals WHERE request_id = ? "
            "ORDER BY approved_at, approver_id",
            (request_id,),
        )
        return tuple(str(approver_id) for (approver_id,) in rows)

    def latest_grant_id(self, request_id: str) -> str | None:
        rows = self.db.query(
            "SELECT id FROM access_grants WHERE request_id = ? ORDER BY issued_at", (request_id,)
        )
        return str(rows[-1][0]) if rows else None

    def lapsed_request_ids(self, now_unix: int) -> list[str]:
        """Requests nobody decided (or whose grant was never recorded) past their lapse."""
        rows = self.db.query(
            "SELECT id FROM access_requests WHERE status IN ('pending', 'granting') "
            "AND lapses_unix <= ? "
            "ORDER BY id",
            (now_unix,),
        )
        return [str(request_id) for (request_id,) in rows]

    # ------------------------------------------------------------------ grants

    def grant(self, grant_id: str) -> GrantRow | None:
        rows = self._rows(GrantRow, "FROM access_grants WHERE id = ?", (grant_id,))
        return rows[0] if rows else None

    def grants_due_to_expire(self, now_unix: int) -> list[GrantRow]:
        """Grants past their expiry that stand (not revoked) and whose expiry is unrecorded."""
        return self._rows(
            GrantRow,
            "FROM access_grants "
            "WHERE expiry_recorded = 0 AND revoked_at IS NULL AND expires_unix <= ? ORDER BY id",
            (now_unix,),
        )

    # ------------------------------------------------------------------ reviews

    def review(self, review_id: str) -> Review | None:
        rows = self._rows(Review, "FROM break_glass_reviews WHERE id = ?", (review_id,))
        return rows[0] if rows else None

    def reviews(self, *, status: str | None, limit: int) -> list[Review]:
        tail = "FROM break_glass_reviews"
        params: list[Any] = []
        if status:
            tail += " WHERE status = ?"
            params.append(status)
        params.append(limit)
        return self._rows(Review, tail + " ORDER BY due_unix, id LIMIT ?", params)


class ApprovalWrites:
    """The writes of one transaction under the approvals lock (``ApprovalRepository.writing``).

    A method that can lose a race says so by its result (False, or a count) rather than
    raising, so the step decides what losing means."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur

    # ------------------------------------------------------------------ requests

    def insert_request(
        self,
        rec: AccessRequestRecord,
        requester_id: str,
        doc: dict[str, Any],
        sha: str,
        lapses_unix: int,
        decided_at: str | None,
        ledger_index: int,
    ) -> None:
        # The requester's full id: the record's actor carries it cut to the ledger's length.
        self._cur.execute(
            "INSERT INTO access_requests (id, kind, requester_id, canonical, request_sha256, "
            "dataset, approvers_required, status, created_at, lapses_unix, decided_at, "
            "ledger_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id,
                rec.kind,
                requester_id,
                json.dumps(doc, sort_keys=True),
                sha,
                rec.dataset,
                rec.approvers_required,
                rec.status,
                rec.created_at,
                lapses_unix,
                decided_at,
                ledger_index,
            ),
        )

    def move_request(
        self,
        request_id: str,
        to: RequestStatus,
        *,
        only_from: Sequence[RequestStatus],
        decided_at: str | None = None,
    ) -> bool:
        """Move a request to ``to`` if it is in one of ``only_from``; False if it was not."""
        states = ", ".join("?" for _ in only_from)
        if decided_at is None:
            self._cur.execute(
                f"UPDATE access_requests SET status = ? WHERE id = ? AND status IN ({states})",
                (to, request_id, *only_from),
            )
        else:
            self._cur.execute(
                "UPDATE access_requests SET status = ?, decided_at = ? "
                f"WHERE id = ? AND status IN ({states})",
                (to, decided_at, request_id, *only_from),
            )
        return self._cur.rowcount == 1

    def insert_approval(
        self,
        request_id: str,
        approver_id: str,
        approver_json: str,
        reason: str,
        approved_at: str,
        ledger_index: int,
    ) -> bool:
        """Record one approval; False if this approver had already approved."""
        self._cur.execute(
            "INSERT INTO access_approvals (request_id, approver_id, approver, reason, "
            "approved_at, ledger_index) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id, approver_id) DO NOTHING",
            (request_id, approver_id, approver_json, reason, approved_at, ledger_index),
        )
        return self._cur.rowcount != 0

    def approval_count(self, request_id: str) -> int:
        row = self._cur.execute(
            "SELECT COUNT(*) FROM access_approvals WHERE request_id = ?", (request_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ grants

    def insert_grant(self, claims: GrantClaims, token: str, ledger_index: int) -> None:
        self._cur.execute(
            "INSERT INTO access_grants (id, request_id, kind, principal_id, token, token_sha256, "
            "issued_at, expires_at, expires_unix, ledger_index) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claims.grant_id,
                claims.request_id,
                claims.kind,
                claims.principal,
                token,
                token_sha256(token),
                iso(claims.issued_at),
                iso(claims.expires_at),
                to_unix(claims.expires_at),
                ledger_index,
            ),
        )

    def revoke_grant(self, grant_id: str, at: str, by: str) -> None:
        self._cur.execute(
            "UPDATE access_grants SET revoked_at = ?, revoked_by = ? "
            "WHERE id = ? AND revoked_at IS NULL",
            (at, by, grant_id),
        )

    def mark_expiry_recorded(self, grant_id: str) -> None:
        self._cur.execute("UPDATE access_grants SET expiry_recorded = 1 WHERE id = ?", (grant_id,))

    def use_seen(self, grant_id: str, use_id: str) -> bool:
        return (
            self._cur.execute(
                "SELECT 1 FROM access_grant_uses WHERE grant_id = ? AND use_id = ?",
                (grant_id, use_id),
            ).fetchone()
            is not None
        )

    def use_count(self, grant_id: str) -> int:
        row = self._cur.execute(
            "SELECT COUNT(*) FROM access_grant_uses WHERE grant_id = ?", (grant_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def insert_use(self, grant_id: str, use_id: str, used_at: str) -> bool:
        """Count one use; False if this use id was counted already."""
        self._cur.execute(
            "INSERT INTO access_grant_uses (grant_id, use_id, used_at) VALUES (?, ?, ?) "
            "ON CONFLICT (grant_id, use_id) DO NOTHING",
            (grant_id, use_id, used_at),
        )
        return self._cur.rowcount != 0

    # ------------------------------------------------------------------ reviews

    def insert_review(
        self,
        review_id: str,
        request_id: str,
        grant_id: str,
        principal_id: str,
        created_at: str,
        due_at: str,
        due_unix: int,
    ) -> None:
        self._cur.execute(
            "INSERT INTO break_glass_reviews (id, request_id, grant_id, principal_id, status, "
            "created_at, due_at, due_unix) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            (review_id, request_id, grant_id, principal_id, created_at, due_at, due_unix),
        )

    def close_review(
        self, review_id: str, outcome: str, reviewer_id: str, reviewed_at: str, notes: str
    ) -> None:
        self._cur.execute(
            "UPDATE break_glass_reviews SET status = ?, reviewer_id = ?, reviewed_at = ?, "
            "notes = ? WHERE id = ? AND status = 'pending'",
            (outcome, reviewer_id, reviewed_at, notes, review_id),
        )
