"""Benchmark: how long ``bastion`` takes to start, with lazy command loading.

Each sample is a fresh process (wall time from spawn to exit), so it is what a person waits
for at a prompt. Measured, in the same run:

* baseline: the bare interpreter, ``python -c pass`` (nothing Bastion can make faster);
* ``bastion --help``: the top-level help, built from ``cli/main.py``'s table;
* ``bastion ledger --help``: one group, which imports the ledger's CLI modules and the log;
* eager: importing every CLI module, which is what ``bastion --help`` did before the table
  (about 1.1 s on an idle machine).

Usage: ``python bench/bench_cli.py [--runs R]``; prints one JSON summary (median and
min-max of each, and each median as a ratio to the bare interpreter's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bastion.cli.main import COMMANDS

EAGER = "import " + ", ".join(
    sorted({f"bastion.cli.{m}" for entry in COMMANDS.values() for m in entry.modules})
)
CASES: dict[str, list[str]] = {
    "bare interpreter": [sys.executable, "-c", "pass"],
    "bastion --help": [sys.executable, "-m", "bastion.cli.main", "--help"],
    "bastion ledger --help": [sys.executable, "-m", "bastion.cli.main", "ledger", "--help"],
    "eager (every CLI module)": [sys.executable, "-c", EAGER],
}


def sample(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for argv in CASES.values():  # warm the file cache and the bytecode
        sample(argv)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):  # interleaved, so load on the machine hits every case alike
        for name, argv in CASES.items():
            times[name].append(sample(argv))
    base = statistics.median(times["bare interpreter"])
    summary = {
        name: {
            "median_s": round(statistics.median(ts), 4),
            "min_s": round(min(ts), 4),
            "max_s": round(max(ts), 4),
            "ratio_to_bare_interpreter": round(statistics.median(ts) / base, 2),
        }
        for name, ts in times.items()
    }
    print(
        json.dumps(
            {
                "runs": args.runs,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "results": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
