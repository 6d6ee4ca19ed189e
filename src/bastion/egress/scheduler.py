"""Running flows on their schedule: ``bastion egress worker`` and ``bastion serve``.

A flow is due when it has never run or its ``next_due`` (set after every run, from its
``schedule.every``) has passed by the injected clock. One round runs each due flow once;
a failure (a destination down, a refusal) is reported by its type and message, and the flow
stays due, so the next round retries it from the same cursor: a recorded run is delivered
under its own manifest id, never a second one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bastion.clock import parse_iso
from bastion.egress.wiring import Egress
from bastion.errors import BastionError


def due(egress: Egress, now: datetime) -> list[str]:
    """The active flows whose next run is due at ``now``, by name."""
    out = []
    for state in egress.store.states():
        if state.status != "active":
            continue
        if state.next_due is None or parse_iso(state.next_due) <= now:
            out.append(state.name)
    return out


def run_due(egress: Egress) -> list[dict[str, Any]]:
    """One round: run every due flow once; what happened to each, as JSON."""
    results: list[dict[str, Any]] = []
    for name in due(egress, egress.context.clock.now()):
        try:
            results.append(egress.runner.run(name).to_json())
        except BastionError as exc:
            # Its message names the flow and the reason; it never holds a value.
            results.append({"flow": name, "error": type(exc).__name__, "message": str(exc)})
    return results
