"""What a store keeps so that no workflow waits on a broker's redelivery: its ended tasks whose
continuations may not be created yet (`followups.py`).

The rule, the same on every backend: a transition that writes a terminal status on a record with a
`workflow` also marks the task "continuation pending", in the same atomic write as the outcome (SQLite: the
same transaction, `sql_follow.py`; PostgreSQL: the same statement; Redis: the same Lua script; memory:
under its lock). `workflow.continue_workflow` clears the mark once what follows the task exists. A worker
killed in between leaves the mark, which the sweep in every worker's reaper loop finds. A task without a
workflow writes nothing extra.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .base import TaskRecord


@runtime_checkable
class FollowStore(Protocol):
    """The pending continuations' part of a store; every store backend implements it."""

    def follow_pending(self, before: float, limit: int) -> list[str]:
        """Ids of tasks marked before `before` (store time, seconds) and still marked, oldest first."""
        ...

    def follow_done(self, task_id: str) -> None:
        """Clear the mark of `task_id` (what follows it exists); nothing if it has none."""
        ...


def marks(record: TaskRecord) -> bool:
    """Whether a transition that wrote `record` marks it: a terminal record of a workflow (one whose
    `workflow` is an object, as the SQL and Lua forms of this rule check)."""
    return record.status.terminal and isinstance(record.workflow, dict)


class MemoryFollow:
    """`FollowStore` for `MemoryStore`; `MemoryStore.apply_step` calls `_follow_mark` under its lock."""

    _lock: threading.RLock
    _follow: dict[str, float]

    def _follow_marks(self) -> dict[str, float]:
        if not hasattr(self, "_follow"):
            self._follow = {}
        return self._follow

    def _follow_mark(self, record: TaskRecord, now: float) -> None:
        if marks(record):
            self._follow_marks()[record.id] = now

    def follow_pending(self, before: float, limit: int) -> list[str]:
        with self._lock:
            due = sorted((at, task_id) for task_id, at in self._follow_marks().items() if at < before)
        return [task_id for _, task_id in due[:limit]]

    def follow_done(self, task_id: str) -> None:
        with self._lock:
            self._follow_marks().pop(task_id, None)
