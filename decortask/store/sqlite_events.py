"""The event feed of a SQLite store: a table of task events, appended by triggers in the writer's transaction.

A store opened with events on (`SQLiteStore(url, events=N)`) gives each of its connections TEMP triggers:
an insert into `decortask_tasks` (a new record), an update that changes its status or attempt (a state
change) or its progress, and an insert into `decortask_logs` (a log line) each append one row to
`decortask_events` inside the same statement, so an event exists exactly when its change was committed.
The triggers are per connection, so only processes that asked for events pay for them, and the code of
the hot path (`sqlite_steps`, `sqlite_cas`) knows nothing about them.

Rows are numbered by `AUTOINCREMENT`: ids are never reused and, since SQLite has one writer at a time and a
rolled-back insert also rolls back the counter, they are contiguous in commit order. A reader that has seen
id N and next sees N + k knows k - 1 events were trimmed in between (`events.py` reports it as a gap).
Every 1,000th row (or every N/10th, for a small N) trims the table to the newest N rows (one indexed range
delete).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .event_rows import FIELDS, event_fields, trim_every

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS decortask_events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
    " kind TEXT NOT NULL, task_id TEXT NOT NULL, name TEXT, queue TEXT, status TEXT, data TEXT)",
)

_PATHS = ", ".join(f"'$.{name}'" for name in FIELDS)
_NOW = "(julianday('now') - 2440587.5) * 86400.0"
_WATCHED = "json_extract({row}.record, '$.attempt', '$.progress', '$.progress_message')"


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the events table (kept if it exists); costs nothing until triggers write to it."""
    for statement in SCHEMA:
        conn.execute(statement)


def install_triggers(conn: sqlite3.Connection, keep: int) -> None:
    """Give `conn` the TEMP triggers that append events for its writes, keeping the newest `keep` rows."""
    state_row = (
        f"INSERT INTO decortask_events (ts, kind, task_id, name, queue, status, data) VALUES ({_NOW}, "
        f"'{{kind}}', NEW.id, NEW.name, NEW.queue, NEW.status, json_extract(NEW.record, {_PATHS}));"
    )
    state_change = (
        "NEW.status IS NOT OLD.status OR "
        "json_extract(NEW.record, '$.attempt') IS NOT json_extract(OLD.record, '$.attempt')"
    )
    statements = (
        "CREATE TEMP TRIGGER IF NOT EXISTS decortask_event_created AFTER INSERT ON decortask_tasks "
        f"BEGIN {state_row.format(kind='state')} END",
        "CREATE TEMP TRIGGER IF NOT EXISTS decortask_event_state AFTER UPDATE ON decortask_tasks "
        f"WHEN {state_change} BEGIN {state_row.format(kind='state')} END",
        "CREATE TEMP TRIGGER IF NOT EXISTS decortask_event_progress AFTER UPDATE ON decortask_tasks "
        f"WHEN NOT ({state_change}) AND {_WATCHED.format(row='NEW')} IS NOT {_WATCHED.format(row='OLD')} "
        f"BEGIN {state_row.format(kind='progress')} END",
        "CREATE TEMP TRIGGER IF NOT EXISTS decortask_event_log AFTER INSERT ON decortask_logs BEGIN "
        "INSERT INTO decortask_events (ts, kind, task_id, name, queue, status, data) "
        f"SELECT {_NOW}, 'log', NEW.task_id, name, queue, status, NEW.line FROM decortask_tasks "
        "WHERE id = NEW.task_id; END",
        "CREATE TEMP TRIGGER IF NOT EXISTS decortask_event_trim AFTER INSERT ON decortask_events "
        f"WHEN NEW.id % {trim_every(keep)} = 0 BEGIN DELETE FROM decortask_events WHERE id <= NEW.id - {int(keep)}; "
        "END",
    )
    for statement in statements:
        conn.execute(statement)


def has_feed(conn: sqlite3.Connection) -> bool:
    """Whether the file has an events table (a store made by an older version has none)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decortask_events'"
    return conn.execute(sql).fetchone() is not None


def read(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
    """Up to `limit` events after id `after`, oldest first, as (id, fields) pairs."""
    if not has_feed(conn):
        return []
    rows = conn.execute(
        "SELECT id, ts, kind, task_id, name, queue, status, data FROM decortask_events WHERE id > ? "
        "ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(int(row[0]), event_fields(row)) for row in rows]


def bounds(conn: sqlite3.Connection) -> tuple[int, int]:
    """(the oldest id kept, the newest id ever written); the oldest is newest + 1 when none is kept."""
    if not has_feed(conn):
        return 1, 0
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decortask_events'").fetchone()
    newest = int(row[0]) if row is not None else 0
    oldest = conn.execute("SELECT min(id) FROM decortask_events").fetchone()[0]
    return (int(oldest) if oldest is not None else newest + 1), newest


def trim(conn: sqlite3.Connection, keep: int) -> int:
    """Delete all but the newest `keep` events; returns how many were deleted."""
    if not has_feed(conn):
        return 0
    cursor = conn.execute(
        "DELETE FROM decortask_events WHERE id <= (SELECT coalesce(max(id), 0) FROM decortask_events) - ?",
        (max(keep, 0),),
    )
    return int(cursor.rowcount)
