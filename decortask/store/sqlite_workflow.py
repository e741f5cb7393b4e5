"""SQL of the workflows' joins (`workflow_state.py`) for `SQLiteStore`: one row per ended chord member."""

from __future__ import annotations

import sqlite3
import time


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
