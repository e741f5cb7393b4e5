"""The late results' mailboxes (`spawn_state.py`) in SQL, whatever the dialect: a row per mailbox in
`boxes`, a row per ended child in `children`.

Each function runs on one connection inside the caller's transaction (SQLite's `BEGIN IMMEDIATE`; on
PostgreSQL `lock` first takes a transaction-level advisory lock on the parent), so a post and a close of
one mailbox never interleave. `mark` is the dialect's parameter mark (`?` or `%s`). A child's `late` is 0
(held for the parent), 1 (late, not yet delivered) or 2 (delivered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .spawn_state import SPAWN_TTL

_PENDING, _DELIVERED = 1, 2

#: The tables, by a `{boxes}`/`{children}` template (SQLite creates them IF NOT EXISTS; PostgreSQL migrates).
SCHEMA = (
    "CREATE TABLE {if_not}{boxes} (parent_id TEXT PRIMARY KEY, taken INTEGER NOT NULL,"
    " closed INTEGER NOT NULL, changed_at {real} NOT NULL)",
    "CREATE TABLE {if_not}{children} (parent_id TEXT NOT NULL, position INTEGER NOT NULL,"
    " child_id TEXT NOT NULL, late INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (parent_id, child_id))",
    "CREATE UNIQUE INDEX {if_not}{prefix}spawn_children_order ON {children} (parent_id, position)",
    "CREATE INDEX {if_not}{prefix}spawn_children_late ON {children} (parent_id) WHERE late = 1",
)


def schema(boxes: str, children: str, real: str, if_not: str = "", prefix: str = "") -> tuple[str, ...]:
    """The CREATE statements for these table names, the dialect's float type and index name prefix."""
    names = {"boxes": boxes, "children": children, "real": real, "if_not": if_not, "prefix": prefix}
    return tuple(statement.format(**names) for statement in SCHEMA)


@dataclass(frozen=True)
class Mailboxes:
    """One connection's view of the two tables, in the caller's transaction."""

    conn: Any
    boxes: str
    children: str
    mark: str = "?"
    #: Locks one parent's mailbox until the transaction ends (PostgreSQL); SQLite's write lock suffices.
    lock: Callable[[Any, str], None] | None = None

    def _run(self, sql: str, *params: Any) -> Any:
        return self.conn.execute(sql.format(b=self.boxes, c=self.children).replace("?", self.mark), params)

    def _box(self, parent_id: str, closed: int) -> tuple[int, int]:
        """(taken, closed) of the mailbox, created (open or closed) if it does not exist."""
        if self.lock is not None:
            self.lock(self.conn, parent_id)
        self._run(
            "INSERT INTO {b} (parent_id, taken, closed, changed_at) VALUES (?, 0, ?, ?)"
            " ON CONFLICT (parent_id) DO NOTHING",
            parent_id, closed, time.time(),
        )  # fmt: skip
        taken, is_closed = self._run(
            "SELECT taken, closed FROM {b} WHERE parent_id = ?", parent_id
        ).fetchone()
        return int(taken), int(is_closed)

    def _touch(self, parent_id: str) -> None:
        self._run("UPDATE {b} SET changed_at = ? WHERE parent_id = ?", time.time(), parent_id)

    def open(self, parent_id: str) -> None:
        self._box(parent_id, 0)
        # Settled mailboxes of long ago go as new ones open: nothing else writes these tables.
        old = time.time() - SPAWN_TTL
        gone = self._run("SELECT parent_id FROM {b} WHERE closed = 1 AND changed_at < ? LIMIT 100", old)
        for (parent,) in gone.fetchall():
            self._run("DELETE FROM {c} WHERE parent_id = ?", parent)
            self._run("DELETE FROM {b} WHERE parent_id = ?", parent)

    def post(self, parent_id: str, child_id: str) -> bool:
        _, closed = self._box(parent_id, 1)  # a mailbox gone is as good as closed
        row = self._run(
            "SELECT late FROM {c} WHERE parent_id = ? AND child_id = ?", parent_id, child_id
        ).fetchone()
        if row is not None:
            return int(row[0]) != _PENDING
        (count,) = self._run("SELECT COUNT(*) FROM {c} WHERE parent_id = ?", parent_id).fetchone()
        self._run(
            "INSERT INTO {c} (parent_id, position, child_id, late) VALUES (?, ?, ?, ?)",
            parent_id, int(count), child_id, _PENDING if closed else 0,
        )  # fmt: skip
        if closed:
            self._touch(parent_id)
        return not closed

    def take(self, parent_id: str, start: int, limit: int) -> list[str]:
        rows = self._run(
            "SELECT child_id FROM {c} WHERE parent_id = ? AND position >= ? ORDER BY position LIMIT ?",
            parent_id, start, limit,
        ).fetchall()  # fmt: skip
        got = [str(row[0]) for row in rows]
        if got:
            self._run("UPDATE {b} SET taken = ? WHERE parent_id = ?", start + len(got), parent_id)
        return got

    def close(self, parent_id: str, keep_taken: bool) -> list[str]:
        taken, closed = self._box(parent_id, 0)
        if not closed:
            self._run(
                "UPDATE {c} SET late = ? WHERE parent_id = ? AND position >= ? AND late = 0",
                _PENDING, parent_id, taken if keep_taken else 0,
            )  # fmt: skip
            self._run("UPDATE {b} SET closed = 1 WHERE parent_id = ?", parent_id)
            self._touch(parent_id)
        rows = self._run(
            "SELECT child_id FROM {c} WHERE parent_id = ? AND late = ? ORDER BY position", parent_id, _PENDING
        ).fetchall()
        return [str(row[0]) for row in rows]

    def delivered(self, parent_id: str, child_id: str) -> None:
        self._run(
            "UPDATE {c} SET late = ? WHERE parent_id = ? AND child_id = ? AND late = ?",
            _DELIVERED, parent_id, child_id, _PENDING,
        )  # fmt: skip

    def holds(self, parent_id: str, start: int) -> bool:
        """Whether the mailbox holds a child at `start` or after (a read: nothing is taken)."""
        sql = "SELECT 1 FROM {c} WHERE parent_id = ? AND position >= ? LIMIT 1"
        return self._run(sql, parent_id, start).fetchone() is not None

    def unsettled(self, limit: int, offset: int) -> list[str]:
        rows = self._run(
            "SELECT parent_id FROM {b} WHERE closed = 0 UNION SELECT parent_id FROM {c} WHERE late = 1"
            " ORDER BY parent_id LIMIT ? OFFSET ?",
            limit, offset,
        ).fetchall()  # fmt: skip
        return [str(row[0]) for row in rows]
