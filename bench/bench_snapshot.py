"""The clean room's snapshot: build time from the vault against a plain DuckDB export.

Same run, same rows: synthetic events are generated once as Parquet and ingested into a vault
(SQLite, the embedded default, or PostgreSQL with --pg). Then, per repetition:

* **baseline**: DuckDB reads the generated Parquet file and writes the snapshot's columns to
  a new Parquet file (what an operator exporting plaintext rows by hand would do);
* **snapshot**: ``SnapshotBuilder.refresh(full=True)``: record the ``cleanroom.snapshot``
  event, read the change feed and the sealed records page by page, open the sealed fields
  (AES-GCM under each subject's key), write Parquet, fsync, rename, hash.

    python bench/bench_snapshot.py --rows 1000000 --repeat 3
    python bench/bench_snapshot.py --rows 10000000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bastion.catalog import default_catalog
from bastion.cleanroom.snapshot import SnapshotBuilder
from bastion.clock import SystemClock
from bastion.keys.local import LocalKeyring
from bastion.ledger import storage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import open_database
from bastion.vault import Vault
from synth_events import ingest_events, synth_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL (default: SQLite)")
    args = ap.parse_args()
    import duckdb

    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        root = Path(tmp)
        source = synth_events(root / "synth", args.rows)
        if args.pg:
            db = open_database(args.pg, schema=f"bench_snapshot_{int(time.time())}")
        else:
            db = open_database(f"sqlite:///{root / 'bench.db'}")
        clock = SystemClock()
        Vault.create_schema(db)
        storage.create_tables(db)
        vault = Vault(db, LocalKeyring.create(root / "keys"), default_catalog(), clock)
        vault.ensure_identity()
        ingest_s = ingest_events(vault, source)
        log = Log(db, NoteSigner.generate("bench/log"), clock, background=False)
        builder = SnapshotBuilder(vault, log, clock, root / "cleanroom")
        columns = ", ".join(f'"{c}"' for c in builder.fields)
        runs = []
        for i in range(args.repeat):
            out = root / f"export-{i}.parquet"
            t0 = time.perf_counter()
            con = duckdb.connect()
            con.execute(
                f"COPY (SELECT event_id, {columns} FROM read_parquet('{source}')) "
                f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
            )
            con.close()
            baseline = time.perf_counter() - t0
            out.unlink()
            t0 = time.perf_counter()
            result = builder.refresh(full=True)
            build = time.perf_counter() - t0
            assert result.manifest.records == args.rows
            runs.append({"baseline_s": baseline, "snapshot_s": build, "ratio": build / baseline})
            print(json.dumps(runs[-1]), flush=True)
        log.close()
        if args.pg:
            db.drop_schema()  # type: ignore[attr-defined]
        db.close()
    ratios = [r["ratio"] for r in runs]
    print(
        json.dumps(
            {
                "rows": args.rows,
                "backend": "postgresql" if args.pg else "sqlite",
                "ingest_s": round(ingest_s, 1),
                "snapshot_s_median": round(statistics.median(r["snapshot_s"] for r in runs), 2),
                "baseline_s_median": round(statistics.median(r["baseline_s"] for r in runs), 3),
                "ratio_median": round(statistics.median(ratios), 1),
                "ratio_min": round(min(ratios), 1),
                "ratio_max": round(max(ratios), 1),
                "snapshot_rows_per_s": round(
                    args.rows / statistics.median(r["snapshot_s"] for r in runs)
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
