"""The receipt rules of DESIGN §2 for a delivery the executor could not simply claim.

Nearly every delivery is the next attempt of a claimable task and is claimed at once, without a read
(`Executor._claim_first`). The rest come here: the record is read, and it says whether the delivery is a
duplicate (terminal), stale, for a task a live worker runs (parked, then checked again), for a task whose
worker died (its `requeue_on_interrupt` decides), or one to defer (an eta ahead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StoreError
from .message import Message
from .middleware import notify_interrupt
from .outcomes import Outcome, Settle
from .records import record_from_message
from .states import CLAIMABLE, TaskStatus
from .store.base import ScheduleEntry, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .task import Task

logger = logging.getLogger("decortask.worker")
T = TypeVar("T")
#: A message whose eta is at most this far ahead runs now (clocks of different hosts differ a little).
ETA_TOLERANCE = 1.0


class ReceiptRules:
    """The record-reading half of the receipt rules; `Executor` supplies claiming, finishing and writing."""

    app: Decortask
    worker_id: str
    clock: Callable[[], float]
    owner_alive: Callable[[str], bool]

    if TYPE_CHECKING:

        def is_orphan(self, record: TaskRecord) -> bool: ...

        def _start(
            self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any] | None, attempt: int
        ) -> Outcome: ...

        def _finish(
            self, task_id: str, attempt: int, status: TaskStatus, *, expect: TaskStatus = ..., **changes: Any
        ) -> TaskRecord | None: ...

        def _write(self, step: Callable[[], T], patient: bool = False) -> T: ...

    def _receive(self, message: Message, queue: str, task: Task[Any, Any] | None) -> Outcome:
        """The receipt rules, from a fresh read of the record."""
        store = self.app.store
        record = self._write(lambda: store.get(message.id))
        if record is None:
            # Published by another producer (or the schedule entry raced its record): record it now.
            record = self._write(lambda: self._create_or_get(message, queue))
            if record.id != message.id:
                logger.info("task %s skipped: idempotency key held by task %s", message.id, record.id)
                return Outcome(Settle.ACK, record.status, "duplicate")
        if record.status.terminal:
            logger.info(
                "duplicate delivery of task %s (already %s): acked, not run", record.id, record.status
            )
            return Outcome(Settle.ACK, record.status, "duplicate")
        if record.status is TaskStatus.RUNNING:
            return self._receive_running(record, message, queue, task)
        if record.status in CLAIMABLE:
            if message.attempt <= record.attempt:
                logger.info(
                    "stale delivery of task %s attempt %d (record at attempt %d): acked, not run",
                    record.id,
                    message.attempt,
                    record.attempt,
                )
                return Outcome(Settle.ACK, record.status, "stale")
            if message.eta is not None and message.eta > self.clock() + ETA_TOLERANCE:
                return self._defer(record, message)
            return self._start(record, message, queue, task, attempt=message.attempt)
        return Outcome(Settle.ACK, record.status, "unexpected_state")

    def _defer(self, record: TaskRecord, message: Message) -> Outcome:
        """A message whose eta lies ahead (another producer set it): park it in the schedule, then ack."""
        entry = ScheduleEntry(
            id=f"{record.id}:{message.attempt}",
            task_id=record.id,
            queue=record.queue,
            due_at=float(message.eta or 0.0),
            body=message.encode().decode(),
            priority=message.priority,
        )
        store = self.app.store
        if record.status is TaskStatus.PENDING:
            done = self._write(
                lambda: store.transition(
                    record.id,
                    TaskStatus.SCHEDULED,
                    expect={TaskStatus.PENDING},
                    expect_attempt=record.attempt,
                    schedule=entry,
                    scheduled_for=entry.due_at,
                )
            )
            if done is None:
                return Outcome(Settle.ACK, None, "lost_claim")
        else:
            self._write(lambda: store.add_schedule(entry))
        logger.info("task %s has an eta %.1f s ahead: scheduled", record.id, entry.due_at - time.time())
        return Outcome(Settle.ACK, TaskStatus.SCHEDULED, "deferred")

    def _create_or_get(self, message: Message, queue: str) -> TaskRecord:
        try:
            return self.app.store.create(record_from_message(message, queue))
        except StoreError:
            # Another delivery of the same message created the record first: use that one.
            existing = self.app.store.get(message.id)
            if existing is None:
                raise
            return existing

    def _receive_running(
        self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any] | None
    ) -> Outcome:
        if record.owner is not None and not self.is_orphan(record) and self.owner_alive(record.owner):
            return self._recheck_later(record, message)
        if record.cancel_requested_at is not None:
            done = self._finish(
                record.id,
                record.attempt,
                TaskStatus.CANCELLED,
                reason="cancelled",
                error_message=f"cancelled; its worker {record.owner} died before it stopped",
            )
            return Outcome(Settle.ACK, TaskStatus.CANCELLED if done else None, "cancelled")
        # The owner died mid-task: the task was interrupted, and its opt-in decides what happens next.
        if task is not None and task.options.requeue_on_interrupt:
            logger.warning(
                "task %s[%s] attempt %d was interrupted: its worker %s was lost; running attempt %d",
                record.name,
                record.id,
                record.attempt,
                record.owner,
                record.attempt + 1,
            )
            notify_interrupt(self.app, None, record, "worker_lost")
            return self._start(record, message, queue, task, attempt=record.attempt + 1)
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.INTERRUPTED,
            expect=TaskStatus.RUNNING,
            reason="worker_lost",
            error_message=f"worker {record.owner} died while running attempt {record.attempt}",
        )
        if done:
            logger.warning(
                "task %s[%s] attempt %d interrupted (worker_lost): its worker %s was lost; INTERRUPTED, not run "
                "again (not opted in to requeue_on_interrupt)",
                record.name,
                record.id,
                record.attempt,
                record.owner,
            )
            notify_interrupt(self.app, None, record, "worker_lost")
        return Outcome(Settle.ACK, TaskStatus.INTERRUPTED if done else None, "worker_lost")

    def _recheck_later(self, record: TaskRecord, message: Message) -> Outcome:
        """A delivery of a task that a live worker is running: a duplicate, unless that worker is dying.

        Acking it outright would lose the task if the owner died a moment ago (RabbitMQ redelivers at
        once, before the heartbeat goes stale), so the message waits in the store's schedule until the
        owner's lease would have lapsed; by then the task has ended (skipped), or its owner is dead (the
        rules for an interrupted task apply), or it is still alive (checked again).
        """
        owner = record.owner or ""
        seen = self.app.store.last_heartbeat(owner) if owner != self.worker_id else None
        due = (seen if seen is not None else time.time()) + self.app.settings.lease_timeout + 1.0
        entry = ScheduleEntry(
            id=f"{record.id}:recheck",
            task_id=record.id,
            queue=record.queue,
            due_at=due,
            body=message.encode().decode(),
            priority=message.priority,
        )
        self._write(lambda: self.app.store.add_schedule(entry))
        logger.info(
            "task %s is running on %s: this delivery is parked for %.1f s, then checked again",
            record.id,
            owner,
            due - time.time(),
        )
        return Outcome(Settle.ACK, record.status, "running_elsewhere")
