"""A child process for the crash and multi-process tests: append forever, print each receipt.

Usage: python _child_appender.py URL SCHEMA|- TAG THREADS COUNT (COUNT 0 = until killed).
The log's signing key comes in $LEDGER_TEST_SKEY. A line ``ACK <index> <entry>`` is printed
(and flushed) only after `append_entry` returned, i.e. after the commit.
"""

from __future__ import annotations

import os
import sys
import threading

from bastion.clock import SystemClock
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import open_database


def main() -> None:
    url, schema, tag, threads, count = sys.argv[1:6]
    db = open_database(url, schema=None if schema == "-" else schema)
    signer = NoteSigner.from_skey(os.environ["LEDGER_TEST_SKEY"])
    log = Log(db, signer, SystemClock(), background=True, publish_interval=0.02)
    out = threading.Lock()
    limit = int(count)

    def appender(t: int) -> None:
        i = 0
        while limit == 0 or i < limit:
            entry = f"{tag}-{t}-{i}"
            receipt = log.append_entry(entry.encode())
            with out:
                sys.stdout.write(f"ACK {receipt.index} {entry}\n")
                sys.stdout.flush()
            i += 1

    workers = [threading.Thread(target=appender, args=(t,)) for t in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    db.close()


if __name__ == "__main__":
    main()
