"""The late results' mailboxes (`spawn_state.py`) for `PostgresStore`; the SQL is `sql_spawn.py`.

Each call is one transaction that first takes a transaction-level advisory lock on the parent's mailbox:
under READ COMMITTED that is what makes a post and a close of one mailbox happen one after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .sql_spawn import Mailboxes, schema

T = TypeVar("T")

#: Schema version 5: the tables (`{s}` is the quoted schema name, as in postgres_schema.MIGRATIONS).
MIGRATION = schema(
    "{s}.decortask_spawn_boxes", "{s}.decortask_spawn_children", "double precision", prefix="decortask_"
)


class PostgresSpawn:
    """`SpawnStore` for `PostgresStore`."""

    if TYPE_CHECKING:
        s: str

        def _run(self, body: Callable[[Any], T], *, atomic: bool = True) -> T: ...

    def _boxes(self, conn: Any) -> Mailboxes:
        def lock(conn: Any, parent_id: str) -> None:
            key = f"{self.s} spawn {parent_id}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

        return Mailboxes(
            conn, f"{self.s}.decortask_spawn_boxes", f"{self.s}.decortask_spawn_children", "%s", lock
        )

    def spawn_open(self, parent_id: str) -> None:
        self._run(lambda conn: self._boxes(conn).open(parent_id))

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        return self._run(lambda conn: self._boxes(conn).post(parent_id, child_id))

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        return self._run(lambda conn: self._boxes(conn).take(parent_id, start, limit))

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        return self._run(lambda conn: self._boxes(conn).close(parent_id, keep_taken))

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        self._run(lambda conn: self._boxes(conn).delivered(parent_id, child_id))

    def spawn_unsettled(self, limit: int, offset: int = 0) -> list[str]:
        return self._run(lambda conn: self._boxes(conn).unsettled(limit, offset), atomic=False)
