"""Egress aggregate flows: the release of one run, against the same bounded GROUP BY in DuckDB.

``--rows`` synthetic events (``synth_events``, seeded, twenty per user) are read as the pages
the vault opens for a run (``SnapshotBatch``: record keys, the flow's fields, each record's
subject), and the demo's ``engagement-by-region`` flow (``group_by [region, event_type]``,
a count, ``watch_time_s`` summed in [0, 600], 20 records per subject, epsilon 1) is released
from them with ``aggregate.build_aggregate``: filter, the domain positions, contribution
bounding (the flow's row token ranks a heavy subject's records), clamping, grouping and
OpenDP's noise. The baseline is DuckDB computing the same bounded aggregate without noise:
``row_number() OVER (PARTITION BY user_id ORDER BY hash(event_id))`` kept to 20, clamped
``sum``, ``count(*)`` by the two dimensions, from the table in memory.

What is not measured here is what an aggregate run shares with a records run: the
``egress.extract`` entry, the vault opening its pages, the manifest, sealing and delivery
(``bench_egress.py`` measures those; an aggregate run delivers 40 rows).

    python bench/bench_egress_aggregate.py --rows 1000000 --repeat 3 \
        --out bench/out/egress-aggregate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.catalog import default_catalog
from bastion.egress import aggregate, payload
from bastion.egress.model import parse_flows
from bastion.egress.tokens import FlowTokens
from bastion.vault.snapshot import DEFAULT_PAGE, SnapshotBatch
from synth_events import synth_events

FLOW = """
flows:
  - name: engagement-by-region
    version: 1
    kind: aggregate
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {key}
    source: {dataset: events, mode: full}
    fields: {region: keep, event_type: keep, watch_time_s: keep}
    aggregate:
      group_by: [region, event_type]
      count: true
      sums: {watch_time_s: [0, 600]}
      max_records_per_subject: 20
      epsilon_per_run: 1.0
      epsilon_budget: 30
    schedule: {every: 1d}
    destination: {type: files, path: outbox}
"""
BOUNDED_SQL = """
SELECT region, event_type, count(*) AS n, sum(least(greatest(watch_time_s, 0), 600)) AS s
FROM (SELECT region, event_type, watch_time_s,
             row_number() OVER (PARTITION BY user_id ORDER BY hash(event_id)) AS rn
      FROM events)
WHERE rn <= 20 GROUP BY region, event_type
"""


def pages(path: Path) -> list[SnapshotBatch]:
    """The events as the vault's pages of a full extract (values as Python lists)."""
    out = []
    table = pq.read_table(path, columns=["event_id", "user_id", "region", "event_type",
                                         "watch_time_s"])  # fmt: skip
    for batch in table.to_batches(max_chunksize=DEFAULT_PAGE):
        cols = batch.to_pydict()
        out.append(
            SnapshotBatch(
                record_keys=cols["event_id"],
                columns={k: cols[k] for k in ("region", "event_type", "watch_time_s")},
                subjects=cols["user_id"],
            )
        )
    return out


def bench(rows: int, repeat: int, root: Path) -> dict[str, Any]:
    source = synth_events(root / "synth", rows)
    key = payload.public_key_to_b64(X25519PrivateKey.generate().public_key())
    (flow,) = parse_flows(FLOW.replace("{key}", key))
    ds = default_catalog().dataset("events")
    opened = pages(source)
    tokens = FlowTokens(bytes(range(32)))
    con = duckdb.connect(config={"threads": 1})
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{source}')")
    release_s, baseline_s = [], []
    kept = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        released = aggregate.build_aggregate(flow, ds, opened, tokens)
        release_s.append(time.perf_counter() - t0)
        kept = released.records_kept
        t0 = time.perf_counter()
        con.execute(BOUNDED_SQL).fetchall()
        baseline_s.append(time.perf_counter() - t0)
    release, baseline = statistics.median(release_s), statistics.median(baseline_s)
    return {
        "rows": rows,
        "repeat": repeat,
        "groups": released.table.num_rows,
        "records_kept": kept,
        "release_s": round(release, 3),
        "release_rows_per_s": round(rows / release),
        "duckdb_bounded_group_by_s": round(baseline, 3),
        "ratio": round(release / baseline, 2),
        "epsilon": released.epsilon,
        "mechanisms": list(released.mechanisms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(args.rows, args.repeat, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
