"""The pending continuations (`follow_state.py`) in SQL: a table of marked task ids, for `SQLiteStore`
and `PostgresStore`.

The transitions write the mark (`sqlite_cas.py`, `sqlite_steps.py`, `postgres_rows.py`), in the
transaction or statement of the outcome; the sweep reads the table by its `since` index, which stays
empty but for the few tasks whose worker died between an outcome and its continuations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")


def schema(table: str, real: str, *, if_not: str = "", prefix: str = "") -> tuple[str, ...]:
    """The table and its index (`{table}` may carry a schema, `prefix` names the index there)."""
    return (
        f"CREATE TABLE {if_not}{table} (task_id text PRIMARY KEY, since {real} NOT NULL)",
        f"CREATE INDEX {if_not}{prefix}follow_since ON {table} (since)",
    )


#: PostgreSQL schema version 7 (`{s}` is the quoted schema name, as in postgres_schema.MIGRATIONS).
MIGRATION = schema("{s}.decortask_follow", "double precision", prefix="decortask_")


def create_sqlite_schema(conn: Any) -> None:
    for statement in schema("decortask_follow", "REAL", if_not="IF NOT EXISTS "):
        conn.execute(statement)


def mark_sqlite(conn: Any, task_id: str, now: float) -> None:
    """Mark `task_id` in the caller's transaction (the outcome's)."""
    conn.execute("INSERT OR REPLACE INTO decortask_follow (task_id, since) VALUES (?, ?)", (task_id, now))


class SQLiteFollow:
    """`FollowStore` for `SQLiteStore`."""

    def _run(self, body: Callable[[Any], T], *, write: bool = True) -> T:
        raise NotImplementedError  # SQLiteStore's: one transaction, retried while the file is locked

    def follow_pending(self, before: float, limit: int) -> list[str]:
        sql = "SELECT task_id FROM decortask_follow WHERE since < ? ORDER BY since LIMIT ?"
        rows = self._run(lambda conn: conn.execute(sql, (before, limit)).fetchall(), write=False)
        return [str(row[0]) for row in rows]

    def follow_done(self, task_id: str) -> None:
        self._run(lambda conn: conn.execute("DELETE FROM decortask_follow WHERE task_id = ?", (task_id,)))


class PostgresFollow:
    """`FollowStore` for `PostgresStore`."""

    if TYPE_CHECKING:
        s: str

        def _run(self, body: Callable[[Any], T], *, atomic: bool = True) -> T: ...

    def follow_pending(self, before: float, limit: int) -> list[str]:
        sql = f"SELECT task_id FROM {self.s}.decortask_follow WHERE since < %s ORDER BY since LIMIT %s"
        rows = self._run(lambda conn: conn.execute(sql, (before, limit)).fetchall(), atomic=False)
        return [str(row[0]) for row in rows]

    def follow_done(self, task_id: str) -> None:
        sql = f"DELETE FROM {self.s}.decortask_follow WHERE task_id = %s"
        self._run(lambda conn: conn.execute(sql, (task_id,)), atomic=False)
