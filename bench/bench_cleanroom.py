"""Clean-room benchmark: Q1-Q7 on 10M events / 500k users, side by side, in ONE run.

Systems (identical bounds: rows per user and group R, groups per user G, clamps, candidates):

- ``bastion``: CleanRoom.run_query end to end (checks, budget transaction on SQLite, DuckDB
  bounding, OpenDP release, ledger append to an in-memory writer);
- ``opendp``: OpenDP's Polars context (``dp.Context.compositor`` with identifier truncation);
- ``baseline``: the exact, non-private DuckDB query (no bounds, no noise) - also the truth;
- ``tumult``: Tumult Analytics on Spark local mode, in its own venv (.venv-tumult), through
  bench/bench_cleanroom_tumult.py (optional: --systems ...,tumult).

Accuracy: median relative error |released - true| / |true| over released groups and runs, at
epsilon = 1, where "true" is the exact unbounded answer (so bounding bias counts as error).
For private keys (campaigns) we also report how many of the true groups were released.

    .venv/bin/python bench/bench_cleanroom.py [--runs 20] [--systems bastion,opendp,baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import duckdb  # noqa: E402
import polars as pl  # noqa: E402

from bastion.cleanroom import CleanRoom, DuckDBEngine  # noqa: E402
from bastion.clock import SystemClock  # noqa: E402
from bastion.events import Actor, encode_event  # noqa: E402
from bastion.ledger.api import Receipt  # noqa: E402
from bastion.store import open_database  # noqa: E402
from bastion.synth import SynthSpec, generate  # noqa: E402

AGES = ["13-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
REGIONS = ["us-northeast", "us-midwest", "us-south", "us-west", "canada", "mexico", "uk", "brazil"]
DELTA = 1e-7
EPSILON = 1.0
CANDIDATES = [float(i) for i in range(0, 301)]  # 1-second grid on [0, 300]

TOP = 10
TOP_GROUPS: dict[str, list[tuple[str, ...]]] = {}

Key = tuple[str, ...]
Answer = dict[Key, float]


@dataclass(frozen=True)
class QuerySpec:
    name: str
    title: str
    bastion: dict[str, Any]
    baseline_sql: str
    private_keys: bool = False
    # For private keys: group sizes (events), to score the 10 largest groups for every system.
    size_sql: str = ""
    # Statistic names -> for multi-statistic queries (quantiles) one answer per statistic.
    stats: tuple[str, ...] = ("value",)


Q: list[QuerySpec] = [
    QuerySpec(
        "Q1",
        "total events",
        {"template": "count", "epsilon": EPSILON, "max_rows_per_group": 1000},
        "SELECT 'all', COUNT(*) FROM events",
    ),
    QuerySpec(
        "Q2",
        "distinct users by age band x region",
        {
            "template": "distinct_users",
            "epsilon": EPSILON,
            "group_by": ["age_band", "region"],
            "max_groups_per_user": 1,
        },
        "SELECT age_band || '|' || region, COUNT(DISTINCT user_id) FROM events GROUP BY 1",
    ),
    QuerySpec(
        "Q3",
        "clicks by campaign (key selection)",
        {
            "template": "count",
            "epsilon": EPSILON,
            "group_by": ["campaign_id"],
            "where": {"event_type": ["ad_click"]},
            "max_groups_per_user": 4,
            "max_rows_per_group": 2,
        },
        "SELECT campaign_id, COUNT(*) FROM events WHERE event_type = 'ad_click' GROUP BY 1",
        private_keys=True,
        size_sql="SELECT campaign_id, COUNT(*) FROM events WHERE event_type = 'ad_click'"
        " GROUP BY 1",
    ),
    QuerySpec(
        "Q4",
        "revenue by campaign x day",
        {
            "template": "sum",
            "epsilon": EPSILON,
            "group_by": ["campaign_id", "day"],
            "measure": "revenue_usd",
            "clamp": [0, 3],
            "max_groups_per_user": 8,
            "max_rows_per_group": 5,
        },
        "SELECT campaign_id || '|' || CAST(day AS VARCHAR), SUM(revenue_usd) FROM events"
        " WHERE revenue_usd IS NOT NULL GROUP BY 1",
        private_keys=True,
        size_sql="SELECT campaign_id || '|' || CAST(day AS VARCHAR), COUNT(*) FROM events"
        " WHERE revenue_usd IS NOT NULL GROUP BY 1",
    ),
    QuerySpec(
        "Q5",
        "mean watch time by age band",
        {
            "template": "mean",
            "epsilon": EPSILON,
            "group_by": ["age_band"],
            "measure": "watch_time_s",
            "where": {"event_type": ["view"]},
            "clamp": [0, 300],
            "max_groups_per_user": 1,
            "max_rows_per_group": 50,
        },
        "SELECT age_band, AVG(watch_time_s) FROM events WHERE event_type = 'view' GROUP BY 1",
    ),
    QuerySpec(
        "Q6",
        "median and p90 watch time by region",
        {
            "template": "quantiles",
            "epsilon": EPSILON,
            "group_by": ["region"],
            "measure": "watch_time_s",
            "where": {"event_type": ["view"]},
            "quantiles": [0.5, 0.9],
            "clamp": [0, 300],
            "bins": 300,
            "max_groups_per_user": 1,
            "max_rows_per_group": 50,
        },
        "SELECT region, quantile_cont(watch_time_s, 0.5), quantile_cont(watch_time_s, 0.9)"
        " FROM events WHERE event_type = 'view' GROUP BY 1",
        stats=("p50", "p90"),
    ),
    QuerySpec(
        "Q7",
        "CTR by campaign",
        {
            "template": "ctr",
            "epsilon": EPSILON,
            "group_by": ["campaign_id"],
            "max_groups_per_user": 4,
            "max_rows_per_group": 10,
        },
        "SELECT campaign_id, SUM(CASE WHEN event_type = 'ad_click' THEN 1 ELSE 0 END)"
        " / SUM(CASE WHEN event_type = 'ad_impression' THEN 1 ELSE 0 END) FROM events"
        " WHERE event_type IN ('ad_click', 'ad_impression') GROUP BY 1",
        private_keys=True,
        size_sql="SELECT campaign_id, COUNT(*) FROM events"
        " WHERE event_type IN ('ad_click', 'ad_impression') GROUP BY 1",
    ),
]


@dataclass
class SystemResult:
    times: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, list[dict[str, Answer]]] = field(default_factory=dict)
    note: str = ""


class _BenchLedger:
    """An in-memory LedgerWriter (the log's own benchmark covers durable appends)."""

    def __init__(self) -> None:
        self.n = 0

    def append(self, event: Any) -> Receipt:
        encode_event(event)
        self.n += 1
        return Receipt(self.n - 1, b"\x00" * 32)

    def append_many(self, events: Any) -> list[Receipt]:
        return [self.append(e) for e in events]


# ---- systems ---------------------------------------------------------------------------------


def run_baseline(data: Path, runs: int) -> tuple[SystemResult, dict[str, dict[str, Answer]]]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data / 'events.parquet'}')")
    res = SystemResult(note="exact DuckDB SQL, no bounds, no noise")
    truth: dict[str, dict[str, Answer]] = {}
    for q in Q:
        res.times[q.name] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = con.execute(q.baseline_sql).fetchall()
            res.times[q.name].append(time.perf_counter() - t0)
        truth[q.name] = {
            stat: {(str(r[0]),): float(r[1 + i]) for r in rows if r[1 + i] is not None}
            for i, stat in enumerate(q.stats)
        }
        if q.size_sql:
            sizes = con.execute(q.size_sql).fetchall()
            top = sorted(sizes, key=lambda r: -int(r[1]))[:TOP]
            TOP_GROUPS[q.name] = [(str(r[0]),) for r in top]
    con.close()
    return res, truth


def _bastion_answers(q: QuerySpec, result: Any) -> dict[str, Answer]:
    out: dict[str, Answer] = {s: {} for s in q.stats}
    for row in result.rows:
        key = ("|".join(row.group.values()) if row.group else "all",)
        stat = row.statistic if q.stats != ("value",) else "value"
        if row.value is not None:
            out[stat][key] = float(row.value)
    return out


class BastionRunner:
    """CleanRoom.run_query end to end, with budgets large enough for the whole benchmark."""

    note = "run_query end to end: checks, budget (SQLite), DuckDB bounding, OpenDP release"

    def __init__(self, data: Path, runs: int) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-cleanroom-"))
        self.db = open_database(f"sqlite:///{tmp / 'bench.db'}")
        self.engine = DuckDBEngine(data, threads=os.cpu_count() or 2)
        self.room = CleanRoom(self.db, _BenchLedger(), SystemClock(), self.engine)
        admin = Actor(id="bench", kind="operator")
        total = EPSILON * runs * len(Q) + 1
        for scope, who in (("analyst", "bench"), ("organization", "b")):
            self.room.set_budget(scope, who, epsilon=total, delta=1e-3, admin=admin, reason="b")

    def __call__(self, q: QuerySpec) -> tuple[float, dict[str, Answer]]:
        t0 = time.perf_counter()
        result = self.room.run_query(q.bastion, analyst="bench", organization="b")
        return time.perf_counter() - t0, _bastion_answers(q, result)

    def close(self) -> None:
        self.engine.close()
        self.db.close()


def _opendp_query(q: QuerySpec, lf: pl.LazyFrame) -> Callable[[], pl.DataFrame]:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    margins = [
        dp.polars.Margin(by=by, max_length=50_000_000, max_groups=groups)
        for by, groups in (
            ([], 1),
            (["cd"], 10**6),
            (["campaign_id"], 10**5),
            (["age_band"], len(AGES)),
            (["region"], len(REGIONS)),
            (["ar"], len(AGES) * len(REGIONS)),
        )
    ]
    delta = DELTA if q.private_keys else 0.0

    def ctx() -> Any:
        loss = dp.loss_of(epsilon=EPSILON, delta=delta) if delta else dp.loss_of(epsilon=EPSILON)
        return dp.Context.compositor(
            data=lf,
            privacy_unit=dp.unit_of(contributions=1, identifier="user_id"),
            privacy_loss=loss,
            split_evenly_over=1,
            margins=margins,
        )

    b = q.bastion
    R, G = b.get("max_rows_per_group", 1), b.get("max_groups_per_user", 1)
    view = pl.col("event_type") == "view"
    ar_keys = pl.DataFrame({"ar": [f"{a}|{r}" for a in AGES for r in REGIONS]})
    # OpenDP 0.16 on Polars 1.36: truncate_num_groups(keep="sample") fails (duplicate struct
    # field), and keep="first" keeps k-1 groups (its filter is rank() < k with ranks from 1;
    # verified: k=1 keeps nothing). So we pass k = G+1 to keep G groups; OpenDP then calibrates
    # its noise to G+1 groups, a (G+1)/G penalty on its accuracy (2x for G = 1), not on its time.
    G1 = G + 1
    if q.name == "Q1":
        return lambda: ctx().query().truncate_per_group(R).select(dp.len()).release().collect()
    if q.name == "Q2":
        return lambda: (
            ctx()
            .query()
            .truncate_per_group(1, by=["ar"])
            .truncate_num_groups(G1, by=["ar"], keep="first")
            .group_by("ar")
            .agg(dp.len())
            .with_keys(ar_keys)
            .release()
            .collect()
        )
    if q.name == "Q3":
        return lambda: (
            ctx()
            .query()
            .filter(pl.col("event_type") == "ad_click")
            .truncate_per_group(R, by=["campaign_id"])
            .truncate_num_groups(G1, by=["campaign_id"], keep="first")
            .group_by("campaign_id")
            .agg(dp.len())
            .release()
            .collect()
        )
    if q.name == "Q4":
        return lambda: (
            ctx()
            .query()
            .filter(pl.col("revenue_usd").is_not_null())
            .truncate_per_group(R, by=["cd"])
            .truncate_num_groups(G1, by=["cd"], keep="first")
            .group_by("cd")
            .agg(dp.len(), pl.col("revenue_usd").fill_null(0.0).dp.sum((0.0, 3.0)))
            .release()
            .collect()
        )
    if q.name == "Q5":
        return lambda: (
            ctx()
            .query()
            .filter(view)
            .truncate_per_group(R, by=["age_band"])
            .truncate_num_groups(G1, by=["age_band"], keep="first")
            .group_by("age_band")
            .agg(pl.col("watch_time_s").fill_null(0.0).dp.mean((0.0, 300.0)))
            .with_keys(pl.DataFrame({"age_band": AGES}))
            .release()
            .collect()
        )
    if q.name == "Q6":
        col = pl.col("watch_time_s").fill_null(0.0)
        return lambda: (
            ctx()
            .query()
            .filter(view)
            .truncate_per_group(R, by=["region"])
            .truncate_num_groups(G1, by=["region"], keep="first")
            .group_by("region")
            .agg(
                col.dp.quantile(0.5, CANDIDATES).alias("p50"),
                col.dp.quantile(0.9, CANDIDATES).alias("p90"),
            )
            .with_keys(pl.DataFrame({"region": REGIONS}))
            .release()
            .collect()
        )
    assert q.name == "Q7"
    return lambda: (
        ctx()
        .query()
        .filter((pl.col("event_type") == "ad_click") | (pl.col("event_type") == "ad_impression"))
        .truncate_per_group(R, by=["campaign_id"])
        .truncate_num_groups(G1, by=["campaign_id"], keep="first")
        .group_by("campaign_id")
        .agg(dp.len(), pl.col("clk").dp.sum((0, 1)))
        .release()
        .collect()
    )


def _opendp_answers(q: QuerySpec, df: pl.DataFrame) -> dict[str, Answer]:
    rows = df.to_dicts()
    key_col = {"Q1": None, "Q2": "ar", "Q3": "campaign_id", "Q4": "cd", "Q5": "age_band"}.get(
        q.name, "region" if q.name == "Q6" else "campaign_id"
    )
    out: dict[str, Answer] = {s: {} for s in q.stats}
    for r in rows:
        key = (str(r[key_col]) if key_col else "all",)
        if q.name in ("Q1", "Q2", "Q3"):
            out["value"][key] = float(r["len"])
        elif q.name == "Q4":
            out["value"][key] = float(r["revenue_usd"])
        elif q.name == "Q5":
            out["value"][key] = float(r["watch_time_s"])
        elif q.name == "Q6":
            out["p50"][key], out["p90"][key] = float(r["p50"]), float(r["p90"])
        else:
            out["value"][key] = float(r["clk"]) / float(r["len"]) if r["len"] else 0.0
    return out


class OpenDPRunner:
    note = "OpenDP 0.16 Polars context, identifier truncation, same bounds"

    def __init__(self, data: Path) -> None:
        warnings.filterwarnings("ignore", category=FutureWarning)
        self.lf = pl.scan_parquet(data / "events.parquet").with_columns(
            pl.concat_str(["age_band", "region"], separator="|").alias("ar"),
            pl.concat_str(
                [pl.col("campaign_id"), pl.col("day").cast(pl.String)], separator="|"
            ).alias("cd"),
            (pl.col("event_type") == "ad_click").cast(pl.Int64).alias("clk"),
        )
        self.queries = {q.name: _opendp_query(q, self.lf) for q in Q}

    def __call__(self, q: QuerySpec) -> tuple[float, dict[str, Answer]]:
        t0 = time.perf_counter()
        df = self.queries[q.name]()
        return time.perf_counter() - t0, _opendp_answers(q, df)

    def close(self) -> None:
        pass


def run_tumult(data: Path, runs: int, timeout_s: float) -> SystemResult:
    python = ROOT / ".venv-tumult" / "bin" / "python"
    if not python.exists():
        raise SystemExit("no .venv-tumult: run bench/setup_tumult.sh first")
    out = Path(tempfile.mkdtemp(prefix="bench-tumult-")) / "tumult.json"
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python)}
    specs = [{"name": q.name, **q.bastion} for q in Q]
    cmd = [
        str(python),
        str(ROOT / "bench" / "bench_cleanroom_tumult.py"),
        "--data",
        str(data / "events.parquet"),
        "--runs",
        str(runs),
        "--out",
        str(out),
        "--queries",
        json.dumps(specs),
    ]
    try:
        subprocess.run(cmd, env=env, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"  tumult stopped after {timeout_s:.0f}s; keeping the queries it finished")
    raw = (
        json.loads(out.read_text())
        if out.exists()
        else {"note": "Tumult Analytics 0.21 on Spark local[2]", "queries": {}}
    )
    done = sum(1 for e in raw["queries"].values() if e["times"])
    raw["note"] = raw.get("note", "") + f"; {done}/{len(Q)} queries finished in {timeout_s:.0f}s"
    res = SystemResult(note=raw.get("note", "Tumult Analytics on Spark local[2]"))
    for q in Q:
        entry = raw["queries"].get(q.name)
        if entry is None or not entry["times"]:
            continue
        res.times[q.name] = entry["times"]
        res.answers[q.name] = [
            {s: {(k,): v for k, v in ans[s].items()} for s in q.stats} for ans in entry["answers"]
        ]
    res.note += f" (startup {raw.get('startup_s', 0):.1f}s, not counted per query)"
    return res


# ---- accuracy --------------------------------------------------------------------------------


def errors(
    q: QuerySpec, truth: dict[str, Answer], answers: list[dict[str, Answer]]
) -> dict[str, float]:
    """Median relative error over released groups; for private keys also over the TOP largest
    true groups, where a group that was not released counts as 100% error."""
    rel: list[float] = []
    top_rel: list[float] = []
    released: list[int] = []
    top = set(TOP_GROUPS.get(q.name, []))
    for ans in answers:
        n = 0
        for stat in q.stats:
            for key, true in truth[stat].items():
                got = ans[stat].get(key)
                if got is None:
                    if key in top:
                        top_rel.append(1.0)
                    continue
                n += 1
                err = abs(got - true) / abs(true) if true != 0 else 0.0
                if true != 0:
                    rel.append(err)
                if key in top:
                    top_rel.append(err)
        released.append(n // len(q.stats))
    out = {
        "median_rel_error": statistics.median(rel) if rel else float("nan"),
        "groups_true": len(truth[q.stats[0]]),
        "groups_released": statistics.mean(released) if released else 0.0,
    }
    if top:
        out["top_rel_error"] = statistics.median(top_rel) if top_rel else float("nan")
    return out


def ensure_data(data: Path, users: int, events: int) -> None:
    if (data / "events.parquet").is_file():
        return
    print(f"generating {events:,} events / {users:,} users into {data} ...", flush=True)
    r = generate(SynthSpec(seed=1, users=users, videos=50_000, events=events), data)
    print(f"  {r.seconds:.1f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "cleanroom-10m")
    ap.add_argument("--users", type=int, default=500_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tumult-runs", type=int, default=3)
    ap.add_argument("--tumult-timeout", type=float, default=3600.0, help="seconds, all queries")
    ap.add_argument("--systems", default="baseline,bastion,opendp")
    ap.add_argument("--queries", default=",".join(q.name for q in Q), help="e.g. Q1,Q3")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cleanroom.json")
    args = ap.parse_args()
    wanted = set(args.queries.split(","))
    Q[:] = [q for q in Q if q.name in wanted]
    ensure_data(args.data, args.users, args.events)
    systems = args.systems.split(",")
    started = time.perf_counter()
    results: dict[str, SystemResult] = {}
    print("baseline (exact) ...", flush=True)
    results["baseline"], truth = run_baseline(args.data, 3)
    # Interleaved, run by run, so that load from anything else on the machine falls on all
    # systems alike.
    runners: dict[str, Any] = {}
    if "bastion" in systems:
        runners["bastion"] = BastionRunner(args.data, args.runs)
    if "opendp" in systems:
        runners["opendp"] = OpenDPRunner(args.data)
    for name, runner in runners.items():
        results[name] = SystemResult(note=runner.note)
    for q in Q:
        for name in runners:
            results[name].times[q.name], results[name].answers[q.name] = [], []
        for _ in range(args.runs):
            for name, runner in runners.items():
                seconds, answer = runner(q)
                results[name].times[q.name].append(seconds)
                results[name].answers[q.name].append(answer)
        print(
            f"  {q.name}: "
            + ", ".join(f"{n} {statistics.median(results[n].times[q.name]):.2f}s" for n in runners),
            flush=True,
        )
    for runner in runners.values():
        runner.close()
    if "tumult" in systems:
        print("tumult ...", flush=True)
        results["tumult"] = run_tumult(args.data, args.tumult_runs, args.tumult_timeout)

    report: dict[str, Any] = {
        "data": str(args.data),
        "runs": args.runs,
        "epsilon": EPSILON,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "queries": {},
        "notes": {k: v.note for k, v in results.items()},
    }
    for q in Q:
        row: dict[str, Any] = {"title": q.title}
        for name, res in results.items():
            if q.name not in res.times:
                continue
            entry: dict[str, Any] = {
                "median_s": statistics.median(res.times[q.name]),
                "runs": len(res.times[q.name]),
            }
            if name != "baseline":
                entry.update(errors(q, truth[q.name], res.answers[q.name]))
            row[name] = entry
        report["queries"][q.name] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    systems = [
        s
        for s in ("bastion", "opendp", "tumult", "baseline")
        if any(s in row for row in report["queries"].values())
    ]
    head = (
        "| Query | "
        + " | ".join(
            f"{s} time (s) | {s} error" if s != "baseline" else "baseline time (s)" for s in systems
        )
        + " | bastion speed-up vs opendp |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in report["queries"].items():
        cells = [f"{name} {row['title']}"]
        for s in systems:
            e = row.get(s)
            if e is None:
                cells += ["—", "—"] if s != "baseline" else ["—"]
                continue
            cells.append(f"{e['median_s']:.2f}")
            if s != "baseline":
                err = f"{e['median_rel_error']:.2%}"
                if "top_rel_error" in e:
                    err = (
                        f"{e['top_rel_error']:.2%} top-{TOP}; {err} over "
                        f"{e['groups_released']:.0f}/{e['groups_true']} released"
                    )
                cells.append(err)
        b, o = row.get("bastion"), row.get("opendp")
        cells.append(f"{o['median_s'] / b['median_s']:.1f}x" if b and o else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
