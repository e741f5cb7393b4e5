"""What late results keep in the store: one mailbox per task that spawned children (`late_results.py`).

A mailbox holds, in order of arrival, the ids of the parent's children that ended, how many of them the
running parent took (its cursor), whether it is closed (the parent ended), and its late children not yet
delivered to their follow-ups. Each operation is one atomic step (SQLite: one transaction,
`sqlite_spawn.py`; Redis: one Lua script, `redis_spawn.py`; memory: under its lock), so a child that ends
as its parent ends is either held before the close (which makes it late if the parent did not take it) or
made late by the closed mailbox: never both, never neither. A late child stays listed until a worker
delivered it (`spawn_delivered`), so a worker killed in between leaves it to the sweep, not to a broker
that may give the message back only after an hour (Redis' visibility timeout).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

#: How long a mailbox is kept after its last change (Redis expires it; the others delete settled ones).
SPAWN_TTL = 7 * 24 * 3600


@runtime_checkable
class SpawnStore(Protocol):
    """The late results' part of a store."""

    def spawn_open(self, parent_id: str) -> None:
        """Create the mailbox of `parent_id` unless it exists (before its first child is sent)."""
        ...

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        """Record that child `child_id` ended; idempotent per child.

        Returns:
            True if the mailbox is open (the parent takes the child while it runs, or its close makes it
            late), or the child was delivered already; False if the child is late and not yet delivered
            (the mailbox is closed, or gone): the caller delivers it, then calls `spawn_delivered`.
        """
        ...

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        """At most `limit` children from position `start` on, in order of arrival, marked taken (the
        cursor moves to the end of what is returned; nothing is written when nothing is returned)."""
        ...

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        """Close the mailbox (idempotent) and return its late children not yet delivered, in order.

        The first close makes late every child the parent did not take, or with `keep_taken` False (the
        parent did not succeed: what it took went nowhere) every child it holds.
        """
        ...

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        """Mark the late child delivered (its follow-up sent): the sweep no longer looks at it."""
        ...

    def spawn_unsettled(self, limit: int, offset: int = 0) -> list[str]:
        """Ids of parents whose mailbox is open or holds late children not yet delivered (for the sweep of
        parents and children whose worker died before delivering), in a stable order, from `offset` on."""
        ...
