"""The SQL of a SQLite store's outbox (see `outbox_state.py`): one row per task whose message is unsettled.

Each function runs on one connection inside the caller's transaction (`SQLiteStore._run`), so a record and
its outbox row are written in the same transaction. The relay reads rows by `look_at` (indexed) joined with
the task's row through the (published, since) index, so finding what to publish never scans the tasks table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..states import TaskStatus
from . import sqlite_rows
from .base import TaskRecord
from .outbox_state import OutboxEntry, OutboxItem

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS decortask_outbox (id TEXT PRIMARY KEY, queue TEXT NOT NULL,"
    " priority INTEGER NOT NULL, persistent INTEGER NOT NULL, body TEXT NOT NULL, since REAL NOT NULL,"
    " published INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS decortask_outbox_since ON decortask_outbox (published, since)",
)


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def create(
    conn: sqlite3.Connection, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
) -> list[TaskRecord]:
    """Insert the records (`sqlite_rows.insert`) and the outbox rows of those inserted."""
    stored = [sqlite_rows.insert(conn, record) for record in records]
    rows = [
        (e.task_id, e.queue, e.priority, int(e.persistent), e.body, e.since)
        for record, e, kept in zip(records, entries, stored, strict=True)
        if kept.id == record.id
    ]
    conn.executemany(
        "INSERT INTO decortask_outbox (id, queue, priority, persistent, body, since) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    return stored


def add(conn: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> None:
    """Write entries of messages already published (`OutboxStore.outbox_add`), replacing older ones."""
    conn.executemany(
        "INSERT OR REPLACE INTO decortask_outbox (id, queue, priority, persistent, body, since, published) "
        "VALUES (?, ?, ?, ?, ?, ?, 1)",
        [(e.task_id, e.queue, e.priority, int(e.persistent), e.body, e.since) for e in entries],
    )


def mark_published(conn: sqlite3.Connection, task_ids: Sequence[str], now: float) -> None:
    for chunk in sqlite_rows.chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(
            f"UPDATE decortask_outbox SET published = 1, since = ? WHERE id IN ({marks})", [now, *chunk]
        )


def due(
    conn: sqlite3.Connection, unpublished_since: float, published_since: float, limit: int
) -> list[OutboxItem]:
    # Each half walks the (published, since) index; the outer ORDER BY merges the two short lists.
    rows = conn.execute(
        "SELECT o.id, o.queue, o.priority, o.persistent, o.body, o.since, o.published, t.status, "
        "json_extract(t.record, '$.attempt'), json_extract(t.record, '$.deliveries') FROM ("
        "SELECT * FROM (SELECT * FROM decortask_outbox WHERE published = 0 AND since <= ? ORDER BY since LIMIT ?) "
        "UNION ALL "
        "SELECT * FROM (SELECT * FROM decortask_outbox WHERE published = 1 AND since <= ? ORDER BY since LIMIT ?)"
        ") o LEFT JOIN decortask_tasks t ON t.id = o.id ORDER BY o.since LIMIT ?",
        (unpublished_since, limit, published_since, limit, limit),
    ).fetchall()
    return [
        OutboxItem(
            OutboxEntry(task_id, queue, int(priority), bool(persistent), body, float(since)),
            bool(published),
            TaskStatus(status) if status is not None else None,
            int(attempt or 0),
            int(deliveries or 0),
        )
        for task_id, queue, priority, persistent, body, since, published, status, attempt, deliveries in rows
    ]


def remove(conn: sqlite3.Connection, task_ids: Sequence[str]) -> None:
    for chunk in sqlite_rows.chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM decortask_outbox WHERE id IN ({marks})", chunk)
