"""``bastion egress``: load, list, show and run declared flows (the custodian's side).

The recipient's commands (``verify``, ``keygen``, ``trust-bundle``) are in ``egress_verify``.
"""

from __future__ import annotations

from bastion.cli.groups import egress_app

__all__ = ["egress_app"]
