"""Gateway test support: the clean room's input as Bastion makes it, from the vault.

Synthetic events are ingested into the runtime's vault and the snapshot is built from the
change feed (``Runtime.snapshot_builder``), as ``bastion serve`` does; nothing is placed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.synth import SynthSpec, generate
from bastion.vault import ingest_file


def snapshot_from_synth(runtime: Any, spec: SynthSpec, scratch: Path) -> Any:
    """Ingest ``spec``'s events into ``runtime``'s vault and build the snapshot from them."""
    generate(spec, scratch, "parquet")
    ingest_file(runtime.vault, "events", scratch / "events.parquet")
    return runtime.snapshot_builder().refresh()
