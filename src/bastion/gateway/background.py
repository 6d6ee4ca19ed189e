"""Work ``bastion serve`` runs beside the API: due erasures, the retention sweeper, and
the flows that are due (``egress.scheduler``).

Each is a daemon thread that waits its interval (real time; what is *due* is decided by the
runtime's clock, so tests move a ``FixedClock``), does one round, logs a failure by its type
only, and tries again next round. ``[subjects] executor_interval_s`` and ``[retention]
sweep_interval_s`` set the intervals; 0 turns one off (the CLI commands do the same work).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bastion.gateway.runtime import Runtime
from bastion.gateway.subject_rights import SubjectRights
from bastion.vault.retention import RetentionSweeper

log = logging.getLogger(__name__)


def sweeper_for(rt: Runtime) -> RetentionSweeper:
    return RetentionSweeper(rt.vault, rt.writer, batch_size=rt.home.settings.retention.batch_size)


def egress_round(rt: Runtime) -> Callable[[], object]:
    """One scheduler round of the flows that are due; wired on first use, so a server with
    no flow loaded pays nothing for egress."""
    wired: list[Any] = []

    def round_() -> object:
        # Imported here: egress brings Arrow, which a server without flows never needs.
        from bastion.egress.scheduler import run_due
        from bastion.egress.wiring import open_egress

        if not wired:
            wired.append(open_egress(rt.home, rt.db, rt.vault, rt.ledger, rt.clock))
        return run_due(wired[0])

    return round_


def start_background(
    rt: Runtime, rights: SubjectRights, stop: threading.Event
) -> list[threading.Thread]:
    """Start the executor and the sweeper (those with an interval); the caller sets ``stop``
    and joins the threads at shutdown."""
    settings = rt.home.settings
    jobs: list[tuple[str, float, Callable[[], object]]] = [
        ("erasures", settings.subjects.executor_interval_s, rights.process_due),
        ("retention", settings.retention.sweep_interval_s, sweeper_for(rt).sweep),
        ("egress", settings.egress.scheduler_interval_s, egress_round(rt)),
    ]
    threads = []
    for name, every, job in jobs:
        if every > 0:
            thread = threading.Thread(
                target=_loop, args=(name, every, job, stop), daemon=True, name=name
            )
            thread.start()
            threads.append(thread)
    return threads


def _loop(name: str, every: float, job: Callable[[], object], stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            job()
        except Exception as exc:  # the next round retries
            log.warning("%s round failed: %s", name, type(exc).__name__)
