"""Benchmark: ``bastion policy check`` (the invariant proof every policy load runs).

Each run checks the shipped pack against the shipped invariants from a cold start (the
per-process caches of truth tables and reports are cleared), so it measures what a policy
load costs in a fresh gateway process. Reported per run: the whole check, the Cedar truth
tables, the CP-SAT searches, and the number of Cedar evaluations.

Baselines, same run:

* the bare Cedar loop: ``cedarpy.is_authorized_batch`` on as many requests as the check
  evaluated (so the ratio says what the search adds to Cedar itself);
* the naive exhaustive check: the size of the full cross product of the same representative
  values (every variable at once), and what evaluating it with Cedar would take at the
  measured bare rate.

Usage: ``python bench/bench_policy_check.py [--runs R]``; prints one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import cedarpy

from bastion.policy import default_policies
from bastion.policy import symbolic as sym
from bastion.policy.invariants import _CACHE, check_invariants, shipped_invariants
from bastion.policy.principal import DEFAULT_PRINCIPAL_CONFIG
from bastion.policy.vocabulary import MAX_APPROVERS


def one_check() -> dict[str, float]:
    _CACHE.clear()
    sym._TABLES.clear()
    compiled = default_policies()
    started = time.perf_counter()
    ests, literals, reads = sym.read_policies(compiled)
    t0 = time.perf_counter()
    model = sym.build_model(
        compiled, literals, ests, reads, DEFAULT_PRINCIPAL_CONFIG, max_approvers=MAX_APPROVERS
    )
    t1 = time.perf_counter()
    sym._TABLES.clear()
    _CACHE.clear()
    whole_started = time.perf_counter()
    report = check_invariants(compiled, shipped_invariants())
    whole = time.perf_counter() - whole_started
    assert report.ok
    tables = t1 - t0
    return {
        "check_s": whole,
        "tables_s": tables,
        "search_s": max(whole - tables - (t0 - started), 0.0),
        "evaluations": float(report.table_rows),
        "product": float(_product(model.domain)),
    }


def _product(domain: sym.Domain) -> int:
    """Requests in the full cross product of the representatives (principals as derived)."""
    n = len(domain.principals)
    for var, values in domain.values.items():
        if var[0] != "principal":
            n *= len(values)
    return n


def bare_cedar_rate(n: int) -> float:
    """Requests/s of is_authorized_batch on a one-policy set, the same shape of entities."""
    ps = cedarpy.PolicySet.from_str(
        'permit (principal, action, resource) when { principal.role == "engineer" && '
        'resource.classification == Bastion::Classification::"protected" };'
    )
    entities = [
        {
            "uid": {"type": "Bastion::Principal", "id": f"p{i}"},
            "attrs": {"role": "engineer"},
            "parents": [],
        }
        for i in range(64)
    ] + [
        {
            "uid": {"type": "Bastion::Field", "id": f"d.f{i}"},
            "attrs": {
                "classification": {
                    "__entity": {"type": "Bastion::Classification", "id": "protected"}
                }
            },
            "parents": [],
        }
        for i in range(64)
    ]
    batch = [
        {
            "principal": {"type": "Bastion::Principal", "id": f"p{i % 64}"},
            "action": {"type": "Bastion::Action", "id": "read"},
            "resource": {"type": "Bastion::Field", "id": f"d.f{(i // 64) % 64}"},
            "context": {"purpose": "", "grant": False},
        }
        for i in range(n)
    ]
    ents = cedarpy.Entities.from_json_str(json.dumps(entities))
    started = time.perf_counter()
    cedarpy.is_authorized_batch(batch, ps, ents)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_check() for _ in range(args.runs)]
    evaluations = int(runs[0]["evaluations"])
    rates = [bare_cedar_rate(evaluations) for _ in range(args.runs)]
    rate = statistics.median(rates)
    check = [r["check_s"] for r in runs]
    bare_s = evaluations / rate
    product = int(runs[0]["product"])
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": args.runs,
        "check_s_median": round(statistics.median(check), 3),
        "check_s_min": round(min(check), 3),
        "check_s_max": round(max(check), 3),
        "tables_s_median": round(statistics.median(r["tables_s"] for r in runs), 3),
        "search_s_median": round(statistics.median(r["search_s"] for r in runs), 3),
        "cedar_evaluations": evaluations,
        "bare_cedar_per_s": round(rate),
        "bare_cedar_s_for_same_evaluations": round(bare_s, 3),
        "check_vs_bare_cedar": round(statistics.median(check) / bare_s, 2),
        "naive_product_requests": product,
        "naive_product_s_at_bare_rate": round(product / rate, 1),
        "naive_vs_check": round((product / rate) / statistics.median(check), 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
