from __future__ import annotations

import threading

import pytest

from bastion.store import Database


def test_transaction_commits_and_rolls_back(db: Database) -> None:
    db.migrate("t", ["CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v {blob})"])
    with db.transaction() as cur:
        cur.execute("INSERT INTO kv VALUES (?, ?)", ("a", b"\x00\x01"))
    with pytest.raises(RuntimeError), db.transaction() as cur:
        cur.execute("INSERT INTO kv VALUES (?, ?)", ("b", b"x"))
        raise RuntimeError("boom")
    rows = db.query("SELECT k, v FROM kv ORDER BY k")
    assert [(k, bytes(v)) for k, v in rows] == [("a", b"\x00\x01")]


def test_named_lock_serializes_read_modify_write(db: Database) -> None:
    db.migrate("t", ["CREATE TABLE IF NOT EXISTS counter (id {int} PRIMARY KEY, n {int})"])
    with db.transaction() as cur:
        cur.execute("INSERT INTO counter VALUES (1, 0)")

    def bump() -> None:
        for _ in range(20):
            with db.transaction(lock="counter") as cur:
                row = cur.execute("SELECT n FROM counter WHERE id = 1").fetchone()
                assert row is not None
                cur.execute("UPDATE counter SET n = ? WHERE id = 1", (row[0] + 1,))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.query("SELECT n FROM counter")[0][0] == 80


def test_migrate_is_idempotent(db: Database) -> None:
    ddl = ["CREATE TABLE IF NOT EXISTS m (x {int})"]
    db.migrate("m", ddl)
    db.migrate("m", ddl)
    assert db.query("SELECT COUNT(*) FROM m")[0][0] == 0
