"""Cancellation requests: written to the store, so they survive restarts and reach every worker.

A request for a running task is then broadcast on the control exchange (RabbitMQ, Redis), so the worker
running it hears at once instead of at its next store poll.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import TaskNotFound
from .records import ended_fields
from .states import CLAIMABLE, TaskStatus

if TYPE_CHECKING:
    from .app import Decortask

#: How often a request is retried when the task changes state under it (it is claimed, it finishes).
_RACE_RETRIES = 5


def request_cancel(app: Decortask, task_id: str) -> bool:
    """Cancel a task: a waiting one ends CANCELLED at once and never starts; a running one is asked to stop.

    A running task sees `ctx.should_stop()` turn true and ends CANCELLED; past `cancel_grace` it is stopped
    by force. A cancelled task is never requeued or retried.

    Returns:
        True if the task was cancelled or the request was recorded; False if it had already ended.

    Raises:
        TaskNotFound: the store has no such task.
    """
    store = app.store
    for _ in range(_RACE_RETRIES):
        record = store.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task {task_id} in the store {app.store_url_masked}")
        if record.status.terminal:
            return False
        now = time.time()
        if record.status in CLAIMABLE:
            done = store.transition(
                task_id,
                TaskStatus.CANCELLED,
                expect={record.status},
                expect_attempt=record.attempt,
                reason="cancelled",
                cancel_requested_at=now,
                **ended_fields(app.settings, now, record.persist),
            )
        else:
            done = store.transition(
                task_id,
                TaskStatus.RUNNING,
                expect={TaskStatus.RUNNING},
                expect_attempt=record.attempt,
                cancel_requested_at=record.cancel_requested_at or now,
            )
        if done is not None:
            if done.status is TaskStatus.RUNNING:
                app.transport.broadcast_cancel(task_id)
            return True
    return False
