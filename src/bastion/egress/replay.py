"""The recipient's replay protection: which manifests it accepted, and each flow's last run.

A manifest id seen before is refused, and so is a run that is not the next one of its flow
(``run == last + 1`` naming the last accepted manifest as ``previous_manifest``); the first run
accepted of a flow may have any number. ``accept`` checks again, publishes and records under
one lock, so two verifiers sharing a state never accept one manifest twice. Only formats and
the standard library: part of the recipient's side (``tests/test_architecture.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from bastion.clock import Clock, SystemClock, iso
from bastion.egress.errors import EgressInputError, EgressRejected
from bastion.egress.manifest import ManifestPredicate

# --- replay state --------------------------------------------------------------------------


class ReplayState(Protocol):
    """What the recipient remembers: manifests accepted, and each flow's last run."""

    def check(self, predicate: ManifestPredicate) -> None:
        """Raise ``egress.replay*`` unless ``predicate`` may be accepted next."""
        ...

    def accept(
        self, predicate: ManifestPredicate, digest: str, publish: Callable[[], None]
    ) -> None:
        """Under the state's lock: check again, ``publish()``, record. If publishing fails
        nothing is recorded (a retry delivers again); if recording fails the files are there
        but the manifest is not accepted, so the retry verifies and records it."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS egress_accepted (
    manifest_id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    run INTEGER NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS egress_heads (
    flow TEXT PRIMARY KEY,
    run INTEGER NOT NULL,
    manifest_id TEXT NOT NULL
);
"""


class SqliteReplayState:
    """The state in one SQLite file (``--state``). A file that is not this state is refused
    (``egress.state.corrupt``): a corrupt state must never silently reset to "first use"."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise EgressInputError(
                "egress.state.corrupt", f"not a usable egress state ({exc})", file=str(path)
            ) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteReplayState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last_run(self, flow: str) -> tuple[int, str] | None:
        row = self._conn.execute(
            "SELECT run, manifest_id FROM egress_heads WHERE flow = ?", (flow,)
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def seen(self, manifest_id: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM egress_accepted WHERE manifest_id = ?", (manifest_id,)
        ).fetchone()
        return row is not None

    def check(self, predicate: ManifestPredicate) -> None:
        p = predicate
        row = self._conn.execute(
            "SELECT flow, run FROM egress_accepted WHERE manifest_id = ?", (p.manifest_id,)
        ).fetchone()
        if row is not None:
            raise EgressRejected(
                "egress.replay",
                f"manifest {p.manifest_id} was already accepted (flow {row[0]!r}, run {row[1]})",
            )
        head = self.last_run(p.flow)
        if head is None:
            return  # the first run this recipient sees of the flow, whatever its number
        last_run, last_id = head
        if p.run <= last_run:
            raise EgressRejected(
                "egress.replay",
                f"run {p.run} of flow {p.flow!r} is not after run {last_run}, already accepted",
            )
        if p.run > last_run + 1:
            raise EgressRejected(
                "egress.replay.gap",
                f"run {p.run} of flow {p.flow!r} follows run {last_run}: verify run "
                f"{last_run + 1}{'' if p.run == last_run + 2 else f' to {p.run - 1}'} first",
            )
        if p.previous_manifest != last_id:
            raise EgressRejected(
                "egress.replay.chain",
                f"run {p.run} of flow {p.flow!r} names previous manifest "
                f"{p.previous_manifest}, but the run {last_run} accepted was {last_id}",
            )

    def accept(
        self, predicate: ManifestPredicate, digest: str, publish: Callable[[], None]
    ) -> None:
        p = predicate
        with self._locked():
            self.check(p)
            publish()
            self._conn.execute(
                "INSERT INTO egress_accepted (manifest_id, flow, run, manifest_sha256, "
                "accepted_at) VALUES (?, ?, ?, ?, ?)",
                (p.manifest_id, p.flow, p.run, digest, iso(self.clock.now())),
            )
            self._conn.execute(
                "INSERT INTO egress_heads (flow, run, manifest_id) VALUES (?, ?, ?) "
                "ON CONFLICT (flow) DO UPDATE SET run = excluded.run, "
                "manifest_id = excluded.manifest_id",
                (p.flow, p.run, p.manifest_id),
            )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # BEGIN IMMEDIATE: two verifiers of the same state serialize here, so the same
        # manifest can never be accepted twice.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
