"""The tables of a SQLite store and the SQL that reads and writes their rows.

Records are JSON blobs next to the few columns that listing filters and sorts on; log lines live in their
own table so appending one never rewrites the record. Every function here runs on one connection inside
the caller's transaction (`SQLiteStore._run`), which makes it atomic.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import StoreError
from .base import LogLine, ScheduleEntry, TaskRecord

#: Most `?` parameters put in one `IN (...)` list.
CHUNK = 500

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS decortask_tasks (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " queue TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,"
    " record TEXT NOT NULL, root_id TEXT)",
    # The listings' index (sqlite_queries.py): newest first, with the columns a name, queue or text filter
    # reads, so those never read a record. Not the status: an index holding it is rewritten by every claim
    # and outcome, and with the status in this index as well a draining worker wrote 44 KB of WAL per task
    # instead of 30 KB. Replaces the created_at-only and the (created_at, status, name, queue, id) indexes
    # of older files.
    "CREATE INDEX IF NOT EXISTS decortask_tasks_listing ON decortask_tasks (created_at, id, name, queue)",
    "DROP INDEX IF EXISTS decortask_tasks_list",
    "DROP INDEX IF EXISTS decortask_tasks_created",
    # Listings and counts by status, newest first: the one index holding the status. Replaces the
    # (status, created_at) index of older files.
    "CREATE INDEX IF NOT EXISTS decortask_tasks_by_status ON decortask_tasks (status, created_at, id)",
    "DROP INDEX IF EXISTS decortask_tasks_status",
    # No index on name or queue: each index costs every enqueue about 7 µs (a fifth of a batched one).
    # Listings filtered by them walk the created_at index newest first and stop at their page size; a
    # name or queue that matches rarely in a very large store costs a scan. Files from before drop them.
    "DROP INDEX IF EXISTS decortask_tasks_name",
    "DROP INDEX IF EXISTS decortask_tasks_queue",
    # The purge's (sqlite_expiry.py): only ended records have an expiry time, so the others are left out, and
    # neither an enqueue nor a claim writes to it (one page fewer each). Replaces the full index of older
    # files.
    "CREATE INDEX IF NOT EXISTS decortask_tasks_expiring ON decortask_tasks (expires_at)"
    " WHERE expires_at IS NOT NULL",
    "DROP INDEX IF EXISTS decortask_tasks_expires",
    # Log lines in order of seq: a new rowid is always above every existing one.
    "CREATE TABLE IF NOT EXISTS decortask_logs (seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL,"
    " line TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS decortask_logs_task ON decortask_logs (task_id, seq)",
    "CREATE TABLE IF NOT EXISTS decortask_idempotency (key TEXT PRIMARY KEY, task_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS decortask_idempotency_task ON decortask_idempotency (task_id)",
    "CREATE TABLE IF NOT EXISTS decortask_schedule (id TEXT PRIMARY KEY, task_id TEXT NOT NULL,"
    " queue TEXT NOT NULL, due_at REAL NOT NULL, body TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,"
    " claimed_until REAL NOT NULL DEFAULT 0, claimed_by TEXT)",
    "CREATE INDEX IF NOT EXISTS decortask_schedule_due ON decortask_schedule (due_at)",
    "CREATE INDEX IF NOT EXISTS decortask_schedule_queue ON decortask_schedule (queue, due_at)",
    "CREATE TABLE IF NOT EXISTS decortask_heartbeats (worker_id TEXT PRIMARY KEY, ts REAL NOT NULL)",
    # Workers that stopped cleanly, so the dashboard tells them from lost ones.
    "CREATE TABLE IF NOT EXISTS decortask_worker_stops (worker_id TEXT PRIMARY KEY, ts REAL NOT NULL)",
)


#: A workflow's tasks (`TaskQuery.root_id`), newest first; only tasks of a workflow have an entry.
ROOT_INDEX = (
    "CREATE INDEX IF NOT EXISTS decortask_tasks_root ON decortask_tasks (root_id, created_at, id)"
    " WHERE root_id IS NOT NULL"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and indexes a store needs (those that exist are kept)."""
    for statement in SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(decortask_tasks)")}
    if "root_id" not in columns:  # a file from before workflows listed their tasks: add and fill it once
        conn.execute("ALTER TABLE decortask_tasks ADD COLUMN root_id TEXT")
        conn.execute(
            "UPDATE decortask_tasks SET root_id = json_extract(record, '$.root_id') "
            "WHERE json_extract(record, '$.root_id') IS NOT NULL"
        )
    conn.execute(ROOT_INDEX)


def require_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Raise `StoreError` unless the file at `path` holds a decortask store (read-only opens create none)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decortask_tasks'"
    if conn.execute(sql).fetchone() is None:
        raise StoreError(
            f"{path.resolve()} is a SQLite database but not a decortask store (it has no decortask_tasks "
            "table); it was left untouched"
        )


def blob(record: TaskRecord) -> str:
    """The stored JSON: the record without its logs, which have their own table."""
    data = record.to_dict()
    data["logs"] = []
    return json.dumps(data, separators=(",", ":"))


def line_json(line: LogLine) -> str:
    """One stored log line."""
    return json.dumps(line.to_dict(), separators=(",", ":"))


def chunks(items: Sequence[str]) -> Iterable[list[str]]:
    """`items` in lists of at most CHUNK, one `IN (...)` list each."""
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


def load(conn: sqlite3.Connection, task_id: str, *, logs: bool = True) -> TaskRecord | None:
    """The record (with its log lines unless `logs` is False), or None."""
    row = conn.execute("SELECT record FROM decortask_tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    record = TaskRecord.from_json(row[0])
    if logs:
        record.logs = load_logs(conn, [task_id]).get(task_id, [])
    return record


def load_logs(conn: sqlite3.Connection, task_ids: Sequence[str]) -> dict[str, list[LogLine]]:
    """The log lines of each task that has any, in the order they were written."""
    found: dict[str, list[LogLine]] = {}
    for chunk in chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT task_id, line FROM decortask_logs WHERE task_id IN ({marks}) ORDER BY seq",
            chunk,
        )
        for task_id, line in rows:
            found.setdefault(task_id, []).append(LogLine.from_dict(json.loads(line)))
    return found


def delete(conn: sqlite3.Connection, task_ids: Sequence[str]) -> None:
    """Remove records with their log lines and the idempotency keys they still hold."""
    for chunk in chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM decortask_tasks WHERE id IN ({marks})", chunk)
        conn.execute(f"DELETE FROM decortask_logs WHERE task_id IN ({marks})", chunk)
        # A key another task has since taken over points at that task and stays.
        conn.execute(f"DELETE FROM decortask_idempotency WHERE task_id IN ({marks})", chunk)


def put_schedule(conn: sqlite3.Connection, entry: ScheduleEntry) -> None:
    """Write a schedule entry, unclaimed, replacing one with the same id."""
    # An upsert (not INSERT OR REPLACE) keeps the rowid, so ties on due_at keep their first-written order.
    conn.execute(
        "INSERT INTO decortask_schedule (id, task_id, queue, due_at, body, priority, claimed_until, "
        "claimed_by) VALUES (?, ?, ?, ?, ?, ?, 0, NULL) ON CONFLICT (id) DO UPDATE SET "
        "task_id = excluded.task_id, queue = excluded.queue, due_at = excluded.due_at, body = excluded.body, "
        "priority = excluded.priority, claimed_until = 0, claimed_by = NULL",
        (entry.id, entry.task_id, entry.queue, entry.due_at, entry.body, entry.priority),
    )


def insert(conn: sqlite3.Connection, record: TaskRecord) -> TaskRecord:
    """Insert one record; see `TaskStore.create`."""
    key = record.idempotency_key
    if key is not None:
        row = conn.execute("SELECT task_id FROM decortask_idempotency WHERE key = ?", (key,)).fetchone()
        holder = load(conn, row[0]) if row else None
        if holder is not None and holder.holds_idempotency_key:
            return holder
        # The previous holder failed, was cancelled or is gone: the key is free to take over.
        conn.execute(
            "INSERT INTO decortask_idempotency (key, task_id) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id",
            (key, record.id),
        )
    try:
        conn.execute(
            "INSERT INTO decortask_tasks (id, name, queue, status, created_at, expires_at, record, root_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.name,
                record.queue,
                record.status.value,
                record.created_at,
                record.expires_at,
                blob(record),
                record.root_id,
            ),
        )
    except sqlite3.IntegrityError as exc:  # the primary key: one statement fewer than looking first
        if "UNIQUE" not in str(exc):
            raise
        raise StoreError(f"task {record.id} already exists; task ids must be unique") from None
    if record.logs:
        conn.executemany(
            "INSERT INTO decortask_logs (task_id, line) VALUES (?, ?)",
            [(record.id, line_json(line)) for line in record.logs],
        )
    return record.detached()
