"""A snapshot build killed at a random moment (SIGKILL) never leaves a torn snapshot served:
the manifest names a whole file (or there is none yet), and the next build succeeds."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from snapshot_support import event, ingest_events, make_vault

from bastion.cleanroom.snapshot import read_manifest, verify_file
from bastion.cleanroom.snapshot_engine import SnapshotEngine
from bastion.clock import FixedClock
from bastion.ledger import storage
from bastion.store import open_database

CHILD = """
import sys
from pathlib import Path
from bastion.catalog import default_catalog
from bastion.cleanroom.snapshot import SnapshotBuilder
from bastion.clock import SystemClock
from bastion.keys.local import LocalKeyring
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import open_database
from bastion.vault import Vault

url, schema, keys, data = sys.argv[1], sys.argv[2] or None, Path(sys.argv[3]), Path(sys.argv[4])
db = open_database(url, schema=schema)
clock = SystemClock()
vault = Vault(db, LocalKeyring.create(keys), default_catalog(), clock)
log = Log(db, NoteSigner.generate("bastion.test/log"), clock, background=False)
builder = SnapshotBuilder(vault, log, clock, data)
while True:
    builder.refresh(full=True)
    print("BUILT", flush=True)
"""


def test_a_build_killed_at_any_moment_leaves_a_whole_snapshot(
    db_url_factory: object, tmp_path: Path
) -> None:
    url, schema = db_url_factory()  # type: ignore[operator]
    db = open_database(url, schema=schema)
    clock = FixedClock()
    try:
        storage.create_tables(db)
        vault = make_vault(db, tmp_path / "keys", clock)
        ingest_events(vault, [event(n, n % 500) for n in range(20_000)])
    finally:
        db.close()
    data = tmp_path / "cleanroom"
    rng = random.Random(7)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, schema or "", str(tmp_path / "keys"), str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "BUILT", child.stderr
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside a later build, or between two
        child.kill()
        child.wait()
        manifest = read_manifest(data)
        assert manifest is not None and manifest.records == 20_000
        verify_file(data, manifest)  # whole: the size and SHA-256 the manifest names
        engine = SnapshotEngine("duckdb", data, FixedClock(), max_age_s=1e6)
        try:
            engine.open()
        finally:
            engine.close()
    leftovers = list(data.glob(".tmp-*"))
    assert len(leftovers) <= 2, "a crashed build leaves at most its own temp files"
