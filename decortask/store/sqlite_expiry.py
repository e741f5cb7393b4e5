"""Expiring records from a SQLite store without stalling its writers, and giving the freed space back.

A SQLite file has one write lock, shared by every worker, producer and (on the embedded broker) the queue
itself. Deleting 100,000 expired records in one transaction held it for about a second, and every claim,
outcome and enqueue on the host waited that long. `purge` deletes them in batches instead, each its own
short write transaction bounded by rows and by time, and pauses between batches for as long as the batch
held the lock, so writers waiting for it get in (they poll every 2 ms at most, `sqlitelocks.py`).

Deleted rows leave free pages. SQLite reuses them for new rows by itself; to return them to the file
system too, a file must be created with incremental auto-vacuum (`sqlitelocks.AUTO_VACUUM`, set before the
first table exists). On such a file `purge` then runs `PRAGMA incremental_vacuum` in bounded steps, again
one short write transaction each. A file made before that keeps its size, reusing its free pages, until
`decortask store vacuum` rewrites it once (`store_cli.py`, docs/operations.md).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from .. import sqlitelocks
from ..states import TERMINAL
from . import sqlite_rows, sqlite_workflow

_TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL))
# INDEXED BY: without statistics the planner may prefer the (status, created_at) index, and would then
# walk every terminal record, expired or not, in every batch.
_EXPIRED_IDS = (
    "SELECT id FROM decortask_tasks INDEXED BY decortask_tasks_expiring "
    f"WHERE expires_at <= ? AND status IN ({', '.join('?' * len(_TERMINAL_VALUES))}) LIMIT ?"
)
#: `PRAGMA auto_vacuum` of a file created with incremental auto-vacuum.
INCREMENTAL = 2


@dataclass(frozen=True)
class ExpiryLimits:
    """How much one write transaction of a purge may do.

    Attributes:
        batch_rows: most records one batch deletes.
        batch_seconds: a batch stops deleting once it has held the write lock this long (checked after
            every `chunk_rows` records, so a batch may overrun by one chunk).
        chunk_rows: records deleted per statement group (their log lines and idempotency keys with them).
        vacuum_pages: most free pages one vacuum step returns to the file system (it too stops after
            `batch_seconds`, checked every 16 pages).
        min_pause: shortest pause between two batches, even after a very short one.
    """

    batch_rows: int = 1000
    batch_seconds: float = 0.02
    chunk_rows: int = 25
    vacuum_pages: int = 128
    min_pause: float = 0.002


@dataclass(frozen=True)
class PurgeBatch:
    """One committed write transaction of a purge: what it did and how long it held the write lock."""

    kind: str  # "delete" or "vacuum"
    rows: int  # records deleted, or pages returned
    held: float  # seconds from taking the write lock to the end of the commit


T = TypeVar("T")


class Run(Protocol):
    """Runs a body in one write transaction and returns what it returned (`SQLiteStore._run`)."""

    def __call__(self, body: Callable[[sqlite3.Connection], T], /) -> T: ...


def purge(
    run: Run,
    conn: Callable[[], sqlite3.Connection],
    now: float,
    limits: ExpiryLimits,
    on_batch: Callable[[PurgeBatch], None] | None = None,
) -> int:
    """Delete every terminal record whose `expires_at` <= `now`, in batches; returns how many.

    `run` runs one write transaction; `conn` gives the connection it runs them on (the calling thread's),
    for the checkpoints between them and the `vacuum` steps that follow. `on_batch` hears about each
    committed transaction (tests, `benchmarks/`).
    """
    connection = conn()
    # A commit that takes the WAL past 1000 pages also checkpoints it before it returns (SQLite's
    # autocheckpoint): after a batch of deletes that is often, and it made such a commit last 100-200 ms
    # more, though the write lock was already free. The purge checkpoints between its batches instead
    # (PASSIVE: it waits for no one and blocks no writer), so a batch's commit is just the commit.
    autocheckpoint = int(connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    connection.execute("PRAGMA wal_autocheckpoint=0")
    try:
        removed = 0
        while True:
            (deleted, more), held = _timed(run, lambda c, t0: _delete_batch(c, now, limits, t0))
            removed += deleted
            if deleted:
                _report(on_batch, PurgeBatch("delete", deleted, held))
                _checkpoint(connection)
            if not more:
                break
            time.sleep(max(held, limits.min_pause))
        if removed:
            vacuum(run, connection, limits, on_batch)
        return removed
    finally:
        connection.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")


def vacuum(
    run: Run,
    conn: sqlite3.Connection,
    limits: ExpiryLimits,
    on_batch: Callable[[PurgeBatch], None] | None = None,
) -> int:
    """Return free pages to the file system, `limits.vacuum_pages` per write transaction; returns how many.

    Does nothing on a file created without incremental auto-vacuum (its free pages are reused instead).
    `run` and `conn` as for `purge`.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
        return 0
    returned = 0
    while True:
        freed, held = _timed(run, lambda c, t0: _vacuum_step(c, limits, t0))
        if freed <= 0:
            return returned
        returned += freed
        _report(on_batch, PurgeBatch("vacuum", freed, held))
        _checkpoint(conn)
        if _free_pages(conn) == 0:
            return returned
        time.sleep(max(held, limits.min_pause))


def _delete_batch(
    conn: sqlite3.Connection, now: float, limits: ExpiryLimits, started: float
) -> tuple[int, bool]:
    """Inside the caller's write transaction: delete up to `batch_rows` expired records, or fewer once
    `batch_seconds` have passed since `started`; returns how many, and whether any may be left."""
    deleted = 0
    while True:
        wanted = min(limits.chunk_rows, limits.batch_rows - deleted)
        ids = [row[0] for row in conn.execute(_EXPIRED_IDS, (now, *_TERMINAL_VALUES, wanted))]
        sqlite_workflow.purge_joins(conn, ids)
        sqlite_rows.delete(conn, ids)
        deleted += len(ids)
        if len(ids) < wanted:
            return deleted, False
        if deleted >= limits.batch_rows or time.perf_counter() - started >= limits.batch_seconds:
            return deleted, True


@dataclass(frozen=True)
class FileState:
    """A SQLite file's size and its free pages, as `compact` reports them."""

    bytes: int
    pages: int
    free_pages: int
    auto_vacuum: int


def file_state(conn: sqlite3.Connection, path: Path) -> FileState:
    """The file's state as `conn` sees it (the WAL's pages count once they are checkpointed)."""
    pages, free, vacuum = (
        int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_count", "freelist_count", "auto_vacuum")
    )
    return FileState(path.stat().st_size, pages, free, vacuum)


def compact(path: Path, patience: float) -> tuple[FileState, FileState]:
    """Rewrite the file at `path` with incremental auto-vacuum and no free pages (`decortask store vacuum`).

    One `VACUUM`: it holds the write lock for as long as the rewrite takes (seconds for a large file), and
    every writer waits up to `patience` seconds; run it while workers are stopped or quiet. Returns the
    state before and after.
    """
    conn = sqlitelocks.connect(str(path), patience)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = file_state(conn, path)
        conn.execute(sqlitelocks.AUTO_VACUUM)  # takes effect with the VACUUM that follows
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks when the WAL is copied back
        return before, file_state(conn, path)
    finally:
        conn.close()


def _vacuum_step(conn: sqlite3.Connection, limits: ExpiryLimits, started: float) -> int:
    """Inside the caller's write transaction: return up to `vacuum_pages` free pages, or fewer once
    `batch_seconds` have passed since `started`; returns how many it did."""
    before = _free_pages(conn)
    # One page per statement: Python's sqlite3 steps a statement without result columns only once, and
    # `incremental_vacuum` frees one page per step (executescript would step on, but commits first).
    for done in range(min(limits.vacuum_pages, before)):
        if done % 16 == 15 and time.perf_counter() - started >= limits.batch_seconds:
            break
        conn.execute("PRAGMA incremental_vacuum(1)")
    return before - _free_pages(conn)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, as far as readers allow, without waiting for anyone."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _free_pages(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _timed(run: Run, body: Callable[[sqlite3.Connection, float], T]) -> tuple[T, float]:
    """Run `body` in one write transaction; (its result, seconds from its start to the end of the commit).

    The clock starts inside the transaction, once the write lock is held, not while waiting for it.
    """
    started = 0.0

    def timed_body(conn: sqlite3.Connection) -> T:
        nonlocal started
        started = time.perf_counter()
        return body(conn, started)

    result = run(timed_body)
    return result, time.perf_counter() - started


def _report(on_batch: Callable[[PurgeBatch], None] | None, batch: PurgeBatch) -> None:
    if on_batch is not None:
        on_batch(batch)
