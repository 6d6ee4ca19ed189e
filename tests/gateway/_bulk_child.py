"""A child process for the bulk-threshold race: count releases in the ledger's commit.

Usage: python _bulk_child.py URL SCHEMA|- TAG THREADS COUNT EMPLOYER_LIMIT. The log's signing
key comes in $LEDGER_TEST_SKEY. Each try records one entry whose side write reserves four new
subjects for employer ``racers`` (``BulkCounter.reserve_in``, as the gateway does); it prints
``OK <index> <entry>`` once the commit returned, or ``REFUSED <entry>`` at the threshold.
"""

from __future__ import annotations

import os
import sys
import threading

from bastion.catalog import SensitiveCategory
from bastion.clock import SystemClock
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.policy import BulkCounter, BulkThresholdExceeded, BulkThresholds
from bastion.store import Cursor, open_database

GEO = SensitiveCategory.PRECISE_GEOLOCATION


def main() -> None:
    url, schema, tag, threads, count, limit = sys.argv[1:7]
    db = open_database(url, schema=None if schema == "-" else schema)
    clock = SystemClock()
    log = Log(db, NoteSigner.from_skey(os.environ["LEDGER_TEST_SKEY"]), clock, background=False)
    thresholds = BulkThresholds(employer={GEO: int(limit)}, principal={GEO: 1_000_000})
    counter = BulkCounter(db, clock, thresholds)
    out = threading.Lock()

    def racer(t: int) -> None:
        for i in range(int(count)):
            entry = f"{tag}-{t}-{i}"
            subjects = [f"{entry}/{k}" for k in range(4)]

            def reserve(cur: Cursor, subjects: list[str] = subjects) -> None:
                counter.reserve_in(cur, f"p-{tag}", "racers", {GEO: subjects})

            try:
                (receipt,) = log.append_entries([entry.encode()], side_write=reserve)
                line = f"OK {receipt.index} {entry}\n"
            except BulkThresholdExceeded:
                line = f"REFUSED {entry}\n"
            with out:
                sys.stdout.write(line)
                sys.stdout.flush()

    workers = [threading.Thread(target=racer, args=(t,)) for t in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    db.close()


if __name__ == "__main__":
    main()
