"""``bastion egress verify``, ``keygen`` and ``trust-bundle``: the recipient's side."""

from __future__ import annotations

from bastion.cli.groups import egress_app

__all__ = ["egress_app"]
