"""Why a delivery was refused: a stable machine-readable code plus a sentence.

Shared by the formats (manifest, payload, delivery, trust bundle) and the recipient's
verifier, so it imports nothing but the foundation. Messages name the file, chunk or field
and never carry a value from the payload.
"""

from __future__ import annotations

from bastion.errors import InputError, IntegrityError


class EgressRejected(IntegrityError):
    """A check on a delivery failed (exit 6). ``code`` is stable (``egress.<reason>``), so a
    recipient's pipeline can branch on it; ``docs/EGRESS-PROTOCOL.md`` lists every code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.detail = message
        super().__init__(f"{code}: {message}")

    def detail_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.detail}


class EgressInputError(InputError):
    """A file the recipient gave is unusable (a malformed trust bundle or key; exit 2).
    ``code`` is stable as for ``EgressRejected``; ``field`` names the offending field."""

    def __init__(
        self, code: str, reason: str, *, file: str | None = None, field: str | None = None
    ) -> None:
        self.code = code
        super().__init__(reason, file=file, field=field)

    def detail_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": str(self), "file": self.file, "field": self.field}
