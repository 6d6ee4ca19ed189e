from __future__ import annotations

import threading

import pytest

from bastion.store import Database, DuplicateKey


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


def test_copy_rows_loads_every_row(db: Database) -> None:
    db.migrate("c", ["CREATE TABLE IF NOT EXISTS bulk (k TEXT PRIMARY KEY, n {int}, v {blob})"])
    rows = [(f"k{i:04d}", i, bytes([i % 256]) * 3) for i in range(2500)]
    with db.transaction() as cur:
        db.copy_rows(cur, "bulk", ("k", "n", "v"), rows)
    got = db.query("SELECT k, n, v FROM bulk ORDER BY k")
    assert [(k, int(n), bytes(v)) for k, n, v in got] == rows


def test_copy_rows_with_a_taken_key_inserts_none_and_keeps_the_transaction(db: Database) -> None:
    db.migrate("c", ["CREATE TABLE IF NOT EXISTS bulk (k TEXT PRIMARY KEY, n {int})"])
    with db.transaction() as cur:
        db.copy_rows(cur, "bulk", ("k", "n"), [("a", 1)])
    with db.transaction() as cur:
        db.copy_rows(cur, "bulk", ("k", "n"), [("b", 2)])
        with pytest.raises(DuplicateKey):
            db.copy_rows(cur, "bulk", ("k", "n"), [("c", 3), ("a", 4), ("d", 5)])
        # The failed load left nothing behind, and the transaction goes on.
        db.copy_rows(cur, "bulk", ("k", "n"), [("e", 6)])
    assert db.query("SELECT k, n FROM bulk ORDER BY k") == [("a", 1), ("b", 2), ("e", 6)]


def test_copy_rows_refuses_names_that_are_not_plain_identifiers(db: Database) -> None:
    db.migrate("c", ["CREATE TABLE IF NOT EXISTS bulk (k TEXT PRIMARY KEY)"])
    with db.transaction() as cur, pytest.raises(ValueError, match="identifier"):
        db.copy_rows(cur, "bulk; DROP TABLE bulk", ("k",), [("a",)])
    with db.transaction() as cur, pytest.raises(ValueError, match="identifier"):
        db.copy_rows(cur, "bulk", ('k") --',), [("a",)])
    assert db.query("SELECT COUNT(*) FROM bulk")[0][0] == 0


def test_copy_rows_other_errors_propagate(db: Database) -> None:
    db.migrate(
        "c", ["CREATE TABLE IF NOT EXISTS strict_bulk (k TEXT PRIMARY KEY, n {int} NOT NULL)"]
    )
    with pytest.raises(Exception) as exc, db.transaction() as cur:
        db.copy_rows(cur, "strict_bulk", ("k", "n"), [("a", None)])
    assert not isinstance(exc.value, DuplicateKey)
    assert db.query("SELECT COUNT(*) FROM strict_bulk")[0][0] == 0
