"""The late results' mailboxes (`spawn_state.py`) for `SQLiteStore`: a row per mailbox, a row per child.

Each method is one write transaction (`SQLiteStore._run` opens it IMMEDIATE), so a post and a close never
interleave. A child's `late` is 0 (held for the parent), 1 (late, not yet delivered) or 2 (delivered).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from .spawn_state import SPAWN_TTL

T = TypeVar("T")
_PENDING, _DELIVERED = 1, 2


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS spawn_boxes (parent_id TEXT PRIMARY KEY, taken INTEGER NOT NULL,"
        " closed INTEGER NOT NULL, changed_at REAL NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS spawn_children (parent_id TEXT NOT NULL, position INTEGER NOT NULL,"
        " child_id TEXT NOT NULL, late INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (parent_id, child_id))"
    )
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS spawn_children_order ON spawn_children (parent_id, position)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS spawn_children_late ON spawn_children (parent_id) WHERE late = 1"
    )


def _box(conn: sqlite3.Connection, parent_id: str, closed: int) -> tuple[int, int]:
    """(taken, closed) of the mailbox, created (open or closed) if it does not exist."""
    conn.execute(
        "INSERT OR IGNORE INTO spawn_boxes (parent_id, taken, closed, changed_at) VALUES (?, 0, ?, ?)",
        (parent_id, closed, time.time()),
    )
    taken, is_closed = conn.execute(
        "SELECT taken, closed FROM spawn_boxes WHERE parent_id = ?", (parent_id,)
    ).fetchone()
    return int(taken), int(is_closed)


def _open(conn: sqlite3.Connection, parent_id: str) -> None:
    _box(conn, parent_id, 0)
    # Settled mailboxes of long ago go as new ones open: nothing else writes these tables.
    old = time.time() - SPAWN_TTL
    for (gone,) in conn.execute(
        "SELECT parent_id FROM spawn_boxes WHERE closed = 1 AND changed_at < ? LIMIT 100", (old,)
    ).fetchall():
        conn.execute("DELETE FROM spawn_children WHERE parent_id = ?", (gone,))
        conn.execute("DELETE FROM spawn_boxes WHERE parent_id = ?", (gone,))


def _post(conn: sqlite3.Connection, parent_id: str, child_id: str) -> bool:
    _, closed = _box(conn, parent_id, 1)  # a mailbox gone is as good as closed
    row = conn.execute(
        "SELECT late FROM spawn_children WHERE parent_id = ? AND child_id = ?", (parent_id, child_id)
    ).fetchone()
    if row is not None:
        return int(row[0]) != _PENDING
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM spawn_children WHERE parent_id = ?", (parent_id,)
    ).fetchone()
    conn.execute(
        "INSERT INTO spawn_children (parent_id, position, child_id, late) VALUES (?, ?, ?, ?)",
        (parent_id, count, child_id, _PENDING if closed else 0),
    )
    if closed:
        _touch(conn, parent_id)
    return not closed


def _take(conn: sqlite3.Connection, parent_id: str, start: int, limit: int) -> list[str]:
    got = [
        row[0]
        for row in conn.execute(
            "SELECT child_id FROM spawn_children WHERE parent_id = ? AND position >= ?"
            " ORDER BY position LIMIT ?",
            (parent_id, start, limit),
        )
    ]
    if got:
        conn.execute(
            "UPDATE spawn_boxes SET taken = ?, changed_at = ? WHERE parent_id = ?",
            (start + len(got), time.time(), parent_id),
        )
    return got


def _close(conn: sqlite3.Connection, parent_id: str, keep_taken: bool) -> list[str]:
    taken, closed = _box(conn, parent_id, 0)
    if not closed:
        conn.execute(
            "UPDATE spawn_children SET late = ? WHERE parent_id = ? AND position >= ? AND late = 0",
            (_PENDING, parent_id, taken if keep_taken else 0),
        )
        conn.execute("UPDATE spawn_boxes SET closed = 1 WHERE parent_id = ?", (parent_id,))
        _touch(conn, parent_id)
    rows = conn.execute(
        "SELECT child_id FROM spawn_children WHERE parent_id = ? AND late = ? ORDER BY position",
        (parent_id, _PENDING),
    )
    return [row[0] for row in rows]


def _delivered(conn: sqlite3.Connection, parent_id: str, child_id: str) -> None:
    conn.execute(
        "UPDATE spawn_children SET late = ? WHERE parent_id = ? AND child_id = ? AND late = ?",
        (_DELIVERED, parent_id, child_id, _PENDING),
    )


def _touch(conn: sqlite3.Connection, parent_id: str) -> None:
    conn.execute("UPDATE spawn_boxes SET changed_at = ? WHERE parent_id = ?", (time.time(), parent_id))


def _unsettled(conn: sqlite3.Connection, limit: int) -> list[str]:
    rows = conn.execute(
        "SELECT parent_id FROM spawn_boxes WHERE closed = 0"
        " UNION SELECT parent_id FROM spawn_children WHERE late = 1 LIMIT ?",
        (limit,),
    )
    return [row[0] for row in rows]


class SQLiteSpawn:
    """`SpawnStore` for `SQLiteStore`."""

    def _run(self, body: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        raise NotImplementedError  # SQLiteStore's: one transaction, retried while the file is locked

    def spawn_open(self, parent_id: str) -> None:
        self._run(lambda conn: _open(conn, parent_id))

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        return self._run(lambda conn: _post(conn, parent_id, child_id))

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        return self._run(lambda conn: _take(conn, parent_id, start, limit))

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        return self._run(lambda conn: _close(conn, parent_id, keep_taken))

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        self._run(lambda conn: _delivered(conn, parent_id, child_id))

    def spawn_unsettled(self, limit: int) -> list[str]:
        return self._run(lambda conn: _unsettled(conn, limit), write=False)
