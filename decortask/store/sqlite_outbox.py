"""The SQL of a SQLite store's outbox (see `outbox_state.py`): one row per task whose message is unsettled.

Each function runs on one connection inside the caller's transaction (`SQLiteStore._run`), so a record and
its outbox row are written in the same transaction. The relay reads rows by `look_at` (indexed) joined with
the task's row, so finding what to publish never scans the tasks table.
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
    " priority INTEGER NOT NULL, persistent INTEGER NOT NULL, body TEXT NOT NULL, look_at REAL NOT NULL,"
    " published INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS decortask_outbox_look ON decortask_outbox (look_at)",
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
        (e.task_id, e.queue, e.priority, int(e.persistent), e.body, e.look_at)
        for record, e, kept in zip(records, entries, stored, strict=True)
        if kept.id == record.id
    ]
    conn.executemany(
        "INSERT INTO decortask_outbox (id, queue, priority, persistent, body, look_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    return stored


def mark_published(conn: sqlite3.Connection, task_ids: Sequence[str], look_at: float) -> None:
    for chunk in sqlite_rows.chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(
            f"UPDATE decortask_outbox SET published = 1, look_at = ? WHERE id IN ({marks})", [look_at, *chunk]
        )


def due(conn: sqlite3.Connection, now: float, limit: int) -> list[OutboxItem]:
    rows = conn.execute(
        "SELECT o.id, o.queue, o.priority, o.persistent, o.body, o.look_at, o.published, t.status, "
        "json_extract(t.record, '$.attempt'), json_extract(t.record, '$.deliveries') "
        "FROM decortask_outbox o LEFT JOIN decortask_tasks t ON t.id = o.id "
        "WHERE o.look_at <= ? ORDER BY o.look_at LIMIT ?",
        (now, limit),
    ).fetchall()
    return [
        OutboxItem(
            OutboxEntry(task_id, queue, int(priority), bool(persistent), body, float(look_at)),
            bool(published),
            TaskStatus(status) if status is not None else None,
            int(attempt or 0),
            int(deliveries or 0),
        )
        for task_id, queue, priority, persistent, body, look_at, published, status, attempt, deliveries in rows
    ]


def remove(conn: sqlite3.Connection, task_ids: Sequence[str]) -> None:
    for chunk in sqlite_rows.chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM decortask_outbox WHERE id IN ({marks})", chunk)
