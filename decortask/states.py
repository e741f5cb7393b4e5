"""Task states and the one place where transitions between them are checked."""

from __future__ import annotations

from .errors import IllegalTransition
from .text_enum import TextEnum


class TaskStatus(TextEnum):
    """Lifecycle states of a task record (DESIGN §2)."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED})
#: States from which a worker may claim the task and start an attempt.
CLAIMABLE = frozenset({TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.RETRYING})
#: States whose idempotency key stays taken: a new call with the key returns this task.
HOLDS_IDEMPOTENCY_KEY = frozenset(
    {TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.RUNNING, TaskStatus.RETRYING, TaskStatus.SUCCESS}
)

_S = TaskStatus
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    _S.PENDING: frozenset({_S.RUNNING, _S.SCHEDULED, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED}),
    _S.SCHEDULED: frozenset({_S.PENDING, _S.RUNNING, _S.FAILED, _S.CANCELLED}),
    _S.RUNNING: frozenset(
        {_S.SUCCESS, _S.FAILED, _S.RETRYING, _S.CANCELLED, _S.INTERRUPTED, _S.PENDING, _S.RUNNING}
    ),
    _S.RETRYING: frozenset({_S.PENDING, _S.RUNNING, _S.FAILED, _S.CANCELLED}),
    # A terminal task changes only when a person re-runs it (`decortask retry`).
    _S.SUCCESS: frozenset({_S.PENDING}),
    _S.FAILED: frozenset({_S.PENDING}),
    _S.CANCELLED: frozenset({_S.PENDING}),
    _S.INTERRUPTED: frozenset({_S.PENDING}),
}


def check_transition(task_id: str, current: TaskStatus, target: TaskStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if target not in ALLOWED[current]:
        raise IllegalTransition(
            f"task {task_id}: {current} -> {target} is not a legal transition; this is a decortask bug, "
            "please report it with the task's history (decortask show ID)"
        )
