"""Lock waits of the SQLite connections the store and the embedded broker use (decortask/sqlitelocks.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from decortask import sqlitelocks


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "locks.db")
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (v INTEGER)")
    setup.close()
    return path


def hold_write_lock(path: str, seconds: float) -> threading.Thread:
    """Another connection takes the write lock now and lets it go after `seconds`."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_write_waits_for_a_lock_another_connection_holds_and_then_lands(db: str) -> None:
    conn = sqlitelocks.connect(db, patience=10.0)
    holder = hold_write_lock(db, 0.2)

    conn.execute("INSERT INTO t VALUES (1)")  # autocommit: starts its own transaction

    holder.join()
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_begin_immediate_waits_too(db: str) -> None:
    conn = sqlitelocks.connect(db, patience=10.0)
    holder = hold_write_lock(db, 0.2)

    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("COMMIT")

    holder.join()
    assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_a_lock_held_past_the_patience_is_reported_as_locked(db: str) -> None:
    conn = sqlitelocks.connect(db, patience=0.05)
    holder = hold_write_lock(db, 0.5)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn.execute("INSERT INTO t VALUES (3)")
        assert time.monotonic() - started >= 0.05  # it did wait, for its patience and no more than that
    finally:
        holder.join()


def test_executemany_retries_with_every_row(db: str) -> None:
    conn = sqlitelocks.connect(db, patience=10.0)
    holder = hold_write_lock(db, 0.1)

    conn.executemany("INSERT INTO t VALUES (?)", ((v,) for v in range(3)))  # an iterator, used twice

    holder.join()
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3


def test_other_errors_are_not_retried(db: str) -> None:
    conn = sqlitelocks.connect(db, patience=10.0)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM missing")


def test_sqlites_own_busy_handler_is_off(db: str) -> None:
    # SQLite's handler sleeps 1 ms, 2 ms, 5 ms ... between attempts; the connection waits in finer steps itself.
    conn = sqlitelocks.connect(db, patience=10.0)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
