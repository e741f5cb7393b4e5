"""Interrupted tasks: at shutdown past the grace period, and RUNNING records whose worker died (the reaper).

Both follow one rule (DESIGN §2): a task opted in with `requeue_on_interrupt=True` goes back to PENDING and
its next attempt is scheduled; any other ends INTERRUPTED with a reason. The next attempt is written to the
store's schedule in the same atomic step as the state change, so a crash between the two loses nothing; the
scheduler loop of any worker publishes it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .message import Message
from .middleware import notify_interrupt
from .records import ended_fields, message_from_record
from .states import TaskStatus
from .store.base import ScheduleEntry, TaskQuery, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .security import MessageCipher

logger = logging.getLogger("decortask.worker")

REAP_BATCH = 500


def interrupt(app: Decortask, record: TaskRecord, message: Message | None, reason: str) -> TaskStatus | None:
    """Settle a RUNNING attempt that will not finish; returns the new status, or None if it had moved on.

    Args:
        app: the app whose store holds the record.
        record: the record as it was when the attempt ran (status RUNNING, its attempt number).
        message: the message that started the attempt, if known (else one is rebuilt from the record).
        reason: `shutdown` or `worker_lost`.
    """
    task = app.registry.find(record.name)
    now = time.time()
    current = app.store.get(record.id)
    if current is not None and current.cancel_requested_at is not None:
        # A cancelled task is never requeued, whoever interrupts it.
        done = app.store.transition(
            record.id,
            TaskStatus.CANCELLED,
            expect={TaskStatus.RUNNING},
            expect_attempt=record.attempt,
            reason="cancelled",
            error_message=f"cancelled; its worker stopped ({reason}) before it did",
            **ended_fields(app.settings, now, record.persist),
        )
        if done is None:
            return None
        logger.info(
            "task %s[%s] cancelled; its worker stopped (%s) before it did", record.name, record.id, reason
        )
        return TaskStatus.CANCELLED
    if task is not None and task.options.requeue_on_interrupt:
        nxt = _next_message(record, message, app.cipher)
        entry = ScheduleEntry(
            id=f"{record.id}:{nxt.attempt}",
            task_id=record.id,
            queue=record.queue,
            due_at=now,
            body=nxt.encode().decode(),
            priority=nxt.priority,
        )
        done = app.store.transition(
            record.id,
            TaskStatus.PENDING,
            expect={TaskStatus.RUNNING},
            expect_attempt=record.attempt,
            schedule=entry,
            owner=None,
            reason=None,
            # An orderly shutdown is not a crash; a lost worker counts toward max_deliveries.
            deliveries=0 if reason == "shutdown" else record.deliveries,
        )
        if done is not None:
            logger.warning(
                "task %s[%s] attempt %d interrupted (%s)%s; attempt %d is queued",
                record.name,
                record.id,
                record.attempt,
                reason,
                _ran_for(record, now),
                nxt.attempt,
            )
            notify_interrupt(app, message, record, reason)
            return TaskStatus.PENDING
        return None
    done = app.store.transition(
        record.id,
        TaskStatus.INTERRUPTED,
        expect={TaskStatus.RUNNING},
        expect_attempt=record.attempt,
        reason=reason,
        error_message=f"attempt {record.attempt} was interrupted ({reason}) and the task is not opted in "
        "to requeue_on_interrupt; re-run it with `decortask retry ID`",
        **ended_fields(app.settings, now, record.persist),
    )
    if done is not None:
        logger.warning(
            "task %s[%s] attempt %d interrupted (%s)%s: INTERRUPTED, not run again (not opted in to "
            "requeue_on_interrupt)",
            record.name,
            record.id,
            record.attempt,
            reason,
            _ran_for(record, now),
        )
        notify_interrupt(app, message, record, reason)
        return TaskStatus.INTERRUPTED
    return None


def reap(
    app: Decortask, owner_alive: Callable[[str], bool], orphaned: Callable[[TaskRecord], bool] | None = None
) -> int:
    """Interrupt RUNNING records whose owner stopped heartbeating; returns how many were settled.

    Any worker may run this at any time: every change is a compare-and-set on (RUNNING, attempt), so two
    reapers, or a reaper and a redelivery, never both act on one attempt.
    """
    settled = 0
    running = app.store.list_tasks(TaskQuery(statuses=frozenset({TaskStatus.RUNNING}), limit=REAP_BATCH))
    for record in running:
        lost_here = orphaned is not None and orphaned(record)
        if record.owner is not None and not lost_here and owner_alive(record.owner):
            continue
        if interrupt(app, record, None, "worker_lost") is not None:
            settled += 1
    return settled


def _ran_for(record: TaskRecord, now: float) -> str:
    return f" after {now - record.started_at:.1f} s" if record.started_at else ""


def _next_message(record: TaskRecord, message: Message | None, cipher: MessageCipher | None) -> Message:
    # A rebuilt message is encrypted like a first publish: workers with keys refuse plaintext.
    if message is not None:
        return dataclasses.replace(message, attempt=record.attempt + 1, eta=None)
    return message_from_record(record, cipher)
