"""The late results' mailboxes (`spawn_state.py`) for `SQLiteStore`; the SQL is `sql_spawn.py`.

Each method is one write transaction (`SQLiteStore._run` opens it IMMEDIATE), so a post and a close never
interleave.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from .sql_spawn import Mailboxes, schema

T = TypeVar("T")


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in schema("spawn_boxes", "spawn_children", "REAL", if_not="IF NOT EXISTS "):
        conn.execute(statement)


def _boxes(conn: sqlite3.Connection) -> Mailboxes:
    return Mailboxes(conn, "spawn_boxes", "spawn_children")


class SQLiteSpawn:
    """`SpawnStore` for `SQLiteStore`."""

    def _run(self, body: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        raise NotImplementedError  # SQLiteStore's: one transaction, retried while the file is locked

    def spawn_open(self, parent_id: str) -> None:
        self._run(lambda conn: _boxes(conn).open(parent_id))

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        return self._run(lambda conn: _boxes(conn).post(parent_id, child_id))

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        # A waiting parent reads often and mostly finds nothing: only then take the file's write lock.
        if not self._run(lambda conn: _boxes(conn).holds(parent_id, start), write=False):
            return []
        return self._run(lambda conn: _boxes(conn).take(parent_id, start, limit))

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        return self._run(lambda conn: _boxes(conn).close(parent_id, keep_taken))

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        self._run(lambda conn: _boxes(conn).delivered(parent_id, child_id))

    def spawn_unsettled(self, limit: int, offset: int = 0) -> list[str]:
        return self._run(lambda conn: _boxes(conn).unsettled(limit, offset), write=False)
