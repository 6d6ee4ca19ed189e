"""The gateway's error responses: one JSON shape, a stable ``error`` kind, no protected values.

```json
{"error": "unknown-field", "message": "dataset 'users', field 'x': ...",
 "request_id": "…", "receipt": {"index": 41, "leaf_hash": "…"}}
```

``receipt`` is present when the refusal was recorded in the ledger (it always is, unless the
ledger itself is down, which is then a 503).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from bastion.errors import (
    BastionError,
    ConfigError,
    InputError,
    IntegrityError,
    KeyUnavailable,
    LedgerUnavailable,
    NotInitialized,
    StoreUnavailable,
)


class ReceiptOut(BaseModel):
    index: int = Field(description="The entry's index in the ledger.")
    leaf_hash: str = Field(description="RFC 6962 leaf hash of the entry, hex.")


class ErrorOut(BaseModel):
    error: str = Field(description="A stable, machine-readable kind, e.g. 'unknown-field'.")
    message: str = Field(description="What is wrong and where. Never carries protected values.")
    request_id: str | None = None
    receipt: ReceiptOut | None = Field(
        default=None, description="The ledger entry that records this refusal."
    )
    detail: dict[str, Any] | None = None


class ApiError(Exception):
    """Raised inside a route to answer with ``status`` and an ErrorOut body."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.detail = detail
        self.headers = headers
        self.receipt: ReceiptOut | None = None
        self.request_id: str | None = None


def error_response(exc: ApiError, request_id: str | None = None) -> JSONResponse:
    """The JSON response for an ApiError (its own request id wins over ``request_id``)."""
    body = ErrorOut(
        error=exc.kind,
        message=exc.message,
        request_id=exc.request_id or request_id,
        receipt=exc.receipt,
        detail=exc.detail,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers
    )


STORE_UNAVAILABLE_MESSAGE = (
    "the database could not be read or written ({}), so nothing was released; retry later"
)


def is_store_failure(exc: BaseException) -> bool:
    """Whether a driver error means the database is unreachable, full, locked, corrupt or
    its connection broken (also when that surfaced from a rollback): the store is down, the
    request did nothing wrong. A constraint violation or a bad statement is not one (a bug:
    500)."""
    if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
        return True  # full disk, locked or busy, I/O error, read-only; corrupt, not a database
    # OperationalError: connection lost or terminated, timeouts, lock_timeout. InterfaceError:
    # the connection is closed (a rollback or commit on a broken one).
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def store_unavailable(exc: BaseException) -> ApiError:
    """The 503 for a store failure. Names only the driver error's type: a driver message may
    quote a statement's parameters."""
    return ApiError(503, "store-unavailable", STORE_UNAVAILABLE_MESSAGE.format(type(exc).__name__))


def status_for(exc: BastionError) -> tuple[int, str]:
    """HTTP status and error kind for a part's error. Infrastructure failures are 503."""
    if isinstance(exc, InputError):
        return 422, "invalid-input"
    if isinstance(exc, LedgerUnavailable):
        return 503, "ledger-unavailable"
    if isinstance(exc, KeyUnavailable):
        return 503, "key-unavailable"
    if isinstance(exc, StoreUnavailable):
        return 503, "store-unavailable"
    if isinstance(exc, NotInitialized | ConfigError):
        return 503, "not-configured"
    if isinstance(exc, IntegrityError):
        # Tampered ciphertext or wrapped key: the caller did nothing wrong; nothing released.
        return 500, "integrity-failure"
    return 400, "refused"


# Documented on every protected route so the OpenAPI description lists the error shapes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed request."},
    401: {"model": ErrorOut, "description": "Missing, expired or forged bearer token."},
    403: {"model": ErrorOut, "description": "Denied by policy (recorded in the ledger)."},
    404: {"model": ErrorOut, "description": "Unknown dataset, record or request."},
    409: {"model": ErrorOut, "description": "Conflicts with the current state."},
    422: {"model": ErrorOut, "description": "Invalid input (recorded in the ledger)."},
    429: {"model": ErrorOut, "description": "Would cross a bulk-data threshold."},
    503: {"model": ErrorOut, "description": "Ledger, keys or store unavailable: nothing released."},
}
