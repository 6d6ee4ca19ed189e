"""Why a release was refused, as a stable machine-readable code plus a human sentence."""

from __future__ import annotations

from bastion.errors import IntegrityError


class ReleaseRejected(IntegrityError):
    """A release check failed. ``code`` is stable (``area.reason``) so clients can branch on it.

    The message names what failed and where, never secret material: envelopes, digests and
    identities are public by design in binary transparency.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.detail = message
        super().__init__(f"{code}: {message}")
