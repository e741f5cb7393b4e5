"""SQL of the workflows' joins (`workflow_state.py`) for `SQLiteStore`: one row per ended chord member,
deleted with the records that name its join (`purge_joins`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from . import sqlite_rows
from .workflow_state import join_ids


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS workflow_joins ("
        " join_id TEXT NOT NULL, member INTEGER NOT NULL, ended_at REAL NOT NULL,"
        " PRIMARY KEY (join_id, member)) WITHOUT ROWID"
    )


def join_member(conn: sqlite3.Connection, join_id: str, member: int) -> int:
    """In the caller's write transaction: insert the member's row once, then count the join's rows."""
    conn.execute(
        "INSERT OR IGNORE INTO workflow_joins (join_id, member, ended_at) VALUES (?, ?, ?)",
        (join_id, member, time.time()),
    )
    (count,) = conn.execute("SELECT COUNT(*) FROM workflow_joins WHERE join_id = ?", (join_id,)).fetchone()
    return int(count)


def purge_joins(conn: sqlite3.Connection, task_ids: Sequence[str]) -> None:
    """In the caller's write transaction, before records `task_ids` are deleted: delete the rows of the
    joins their `workflow` names (`workflow_state.join_ids`)."""
    joins: set[str] = set()
    for chunk in sqlite_rows.chunks(task_ids):
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT json_extract(record, '$.workflow') FROM decortask_tasks WHERE id IN ({marks}) "
            "AND json_extract(record, '$.workflow') IS NOT NULL",
            chunk,
        )
        for (spec,) in rows:
            joins |= join_ids(json.loads(spec))
    for chunk in sqlite_rows.chunks(sorted(joins)):
        conn.execute(f"DELETE FROM workflow_joins WHERE join_id IN ({', '.join('?' * len(chunk))})", chunk)
