"""Tumult Analytics side of bench_cleanroom.py. Runs in its own venv (.venv-tumult: Tumult pins
pyspark 3.5, pandas 1.5, numpy 1.26), started by bench_cleanroom.py with PYSPARK_PYTHON set.

Same queries and bounds: MaxGroupsPerID(G) and MaxRowsPerGroupPerID(R) on the grouping
column (multi-column groupings use one pre-computed combined column, as for OpenDP), clamps
as in Bastion. Private keys (campaigns) go through get_groups (partition selection) with a third
of epsilon and all of delta, like Bastion. Writes answers and timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

AGES = ["13-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
REGIONS = ["us-northeast", "us-midwest", "us-south", "us-west", "canada", "mexico", "uk", "brazil"]
DELTA = 1e-7


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--queries", required=True)
    args = ap.parse_args()
    specs = {q["name"]: q for q in json.loads(args.queries)}

    t0 = time.perf_counter()
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from tmlt.analytics import (
        AddRowsWithID,
        ApproxDPBudget,
        KeySet,
        MaxGroupsPerID,
        MaxRowsPerGroupPerID,
        MaxRowsPerID,
        PureDPBudget,
        QueryBuilder,
        Session,
    )

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    sdf = (
        spark.read.parquet(args.data)
        .withColumn("ar", F.concat_ws("|", "age_band", "region"))
        .withColumn("cd", F.concat_ws("|", "campaign_id", F.col("day").cast("string")))
        .withColumn("clk", (F.col("event_type") == "ad_click").cast("long"))
        .withColumn("day", F.col("day").cast("string"))
        .drop("ts")
        .cache()
    )
    sdf.count()
    startup = time.perf_counter() - t0

    def session(eps: float, delta: float = 0.0) -> Any:
        budget = ApproxDPBudget(eps, delta) if delta else PureDPBudget(eps)
        return Session.from_dataframe(
            privacy_budget=budget,
            source_id="events",
            dataframe=sdf,
            protected_change=AddRowsWithID(id_column="user_id"),
        )

    def bounded(qb: Any, col: str, spec: dict[str, Any]) -> Any:
        g = spec.get("max_groups_per_user", 1)
        r = spec.get("max_rows_per_group", 1)
        return qb.enforce(MaxGroupsPerID(col, g)).enforce(MaxRowsPerGroupPerID(col, r))

    def selected(sess: Any, base: Any, col: str, spec: dict[str, Any], eps: float) -> Any:
        groups = sess.evaluate(
            bounded(base(), col, spec).get_groups([col]), ApproxDPBudget(eps, DELTA)
        )
        return KeySet.from_dataframe(groups)

    def run(name: str) -> dict[str, dict[str, float]]:
        spec = specs[name]
        if name == "Q1":
            sess = session(1.0)
            qb = QueryBuilder("events").enforce(MaxRowsPerID(spec["max_rows_per_group"])).count()
            v = sess.evaluate(qb, PureDPBudget(1.0)).collect()[0][0]
            return {"value": {"all": float(v)}}
        if name == "Q2":
            sess = session(1.0)
            keys = KeySet.from_dict({"ar": [f"{a}|{r}" for a in AGES for r in REGIONS]})
            qb = bounded(QueryBuilder("events"), "ar", {"max_groups_per_user": 1}).groupby(keys)
            df = sess.evaluate(qb.count_distinct(["user_id"], name="n"), PureDPBudget(1.0))
            return {"value": {r["ar"]: float(r["n"]) for r in df.collect()}}
        if name == "Q3":
            sess = session(1.0, DELTA)

            def base() -> Any:
                return QueryBuilder("events").filter("event_type = 'ad_click'")

            keys = selected(sess, base, "campaign_id", spec, 1.0 / 3)
            qb = bounded(base(), "campaign_id", spec).groupby(keys).count(name="n")
            df = sess.evaluate(qb, ApproxDPBudget(2.0 / 3, 0))
            return {"value": {r["campaign_id"]: float(r["n"]) for r in df.collect()}}
        if name == "Q4":
            sess = session(1.0, DELTA)

            def base() -> Any:
                return QueryBuilder("events").filter("revenue_usd IS NOT NULL")

            keys = selected(sess, base, "cd", spec, 1.0 / 3)
            qb = bounded(base(), "cd", spec).groupby(keys).sum("revenue_usd", 0.0, 3.0, name="s")
            df = sess.evaluate(qb, ApproxDPBudget(2.0 / 3, 0))
            return {"value": {r["cd"]: float(r["s"]) for r in df.collect()}}
        if name == "Q5":
            sess = session(1.0)
            qb = (
                bounded(QueryBuilder("events").filter("event_type = 'view'"), "age_band", spec)
                .groupby(KeySet.from_dict({"age_band": AGES}))
                .average("watch_time_s", 0.0, 300.0, name="m")
            )
            df = sess.evaluate(qb, PureDPBudget(1.0))
            return {"value": {r["age_band"]: float(r["m"]) for r in df.collect()}}
        if name == "Q6":
            sess = session(1.0)
            out: dict[str, dict[str, float]] = {}
            for q, stat in ((0.5, "p50"), (0.9, "p90")):
                qb = (
                    bounded(QueryBuilder("events").filter("event_type = 'view'"), "region", spec)
                    .groupby(KeySet.from_dict({"region": REGIONS}))
                    .quantile("watch_time_s", q, 0.0, 300.0, name="v")
                )
                df = sess.evaluate(qb, PureDPBudget(0.5))
                out[stat] = {r["region"]: float(r["v"]) for r in df.collect()}
            return out
        assert name == "Q7"
        sess = session(1.0, DELTA)

        def base() -> Any:
            return QueryBuilder("events").filter("event_type IN ('ad_click', 'ad_impression')")

        keys = selected(sess, base, "campaign_id", spec, 1.0 / 3)
        n = sess.evaluate(
            bounded(base(), "campaign_id", spec).groupby(keys).count(name="n"),
            ApproxDPBudget(1.0 / 3, 0),
        )
        c = sess.evaluate(
            bounded(base(), "campaign_id", spec).groupby(keys).sum("clk", 0, 1, name="c"),
            ApproxDPBudget(1.0 / 3, 0),
        )
        counts = {r["campaign_id"]: float(r["n"]) for r in n.collect()}
        clicks = {r["campaign_id"]: float(r["c"]) for r in c.collect()}
        return {"value": {k: clicks.get(k, 0.0) / v for k, v in counts.items() if v > 0}}

    result: dict[str, Any] = {
        "note": "Tumult Analytics 0.21 on Spark local[2], same bounds",
        "startup_s": startup,
        "queries": {},
    }
    for name in specs:
        times: list[float] = []
        answers: list[Any] = []
        result["queries"][name] = {"times": times, "answers": answers}
        for _ in range(args.runs):
            t = time.perf_counter()
            answers.append(run(name))
            times.append(time.perf_counter() - t)
            with open(args.out, "w") as fh:  # after every run: a timeout keeps what finished
                json.dump(result, fh)
        print(f"  tumult  {name}: {min(times):.2f}s", flush=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh)
    spark.stop()


if __name__ == "__main__":
    main()
