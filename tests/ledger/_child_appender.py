"""A child process for the crash and multi-process tests: append forever, print each receipt.

Usage: python _child_appender.py URL SCHEMA|- TAG THREADS COUNT [FILES_DIR|- [side]]
(COUNT 0 = until killed). The log's signing key comes in $LEDGER_TEST_SKEY. A line
``ACK <index> <entry>`` is printed (and flushed) only after the append returned, i.e. after the
commit. With FILES_DIR the log is stored as static files there (the database holds side writes
only); with ``side`` each entry carries a side write that inserts it into table ``side_rows``.
"""

from __future__ import annotations

import os
import sys
import threading

from bastion.clock import SystemClock
from bastion.ledger.file_storage import FileLogStorage
from bastion.ledger.log import Log
from bastion.ledger.note import NoteSigner
from bastion.store import Cursor, open_database


def main() -> None:
    url, schema, tag, threads, count = sys.argv[1:6]
    files = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    side = len(sys.argv) > 7 and sys.argv[7] == "side"
    db = open_database(url, schema=None if schema == "-" else schema)
    signer = NoteSigner.from_skey(os.environ["LEDGER_TEST_SKEY"])
    storage = None if files is None else FileLogStorage(files)
    log = Log(db, signer, SystemClock(), storage=storage, background=True, publish_interval=0.02)
    out = threading.Lock()
    limit = int(count)

    def appender(t: int) -> None:
        i = 0
        while limit == 0 or i < limit:
            entry = f"{tag}-{t}-{i}"
            if side:

                def insert(cur: Cursor, entry: str = entry) -> None:
                    cur.execute("INSERT INTO side_rows (entry) VALUES (?)", (entry,))

                (receipt,) = log.append_entries([entry.encode()], side_write=insert)
            else:
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
