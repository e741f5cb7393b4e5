"""The receipt rules of DESIGN §2 for a delivery the executor could not simply claim.

Nearly every delivery is the next attempt of a claimable task and is claimed at once, without a read
(`Executor._claim_first`). The rest come here: the record is read, and it says whether the delivery is a
duplicate (terminal), stale, for a task a live worker runs (parked, then checked again), for a task whose
worker died (settled by `recovery.settle_interrupted`, as every interrupted attempt is), or one to defer
(an eta ahead).

`ReceiptRules` is a collaborator of the executor: it reaches the executor only through `AttemptRunner`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import clock, recovery
from .errors import StoreError
from .message import Message
from .outcomes import Outcome, Reason, Settle
from .records import record_from_message, schedule_entry
from .security import mask_text
from .states import CLAIMABLE, TaskStatus
from .store.base import TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .task import Task

logger = logging.getLogger("decortask.worker")
T = TypeVar("T")
#: A message whose eta is at most this far ahead runs now (clocks of different hosts differ a little).
ETA_TOLERANCE = 1.0


class AttemptRunner(Protocol):
    """What the receipt rules need from the executor that owns them."""

    app: Decortask
    worker_id: str
    #: The time the eta and expiry checks see (a test may move it).
    clock: Callable[[], float]
    #: Whether a worker (by id) is alive: a fresh heartbeat, or this very worker.
    owner_alive: Callable[[str], bool]

    def is_orphan(self, record: TaskRecord) -> bool:
        """A RUNNING record this worker owns but no longer runs."""
        ...

    def admit(
        self, record: TaskRecord, message: Message, task: Task[Any, Any] | None, attempt: int
    ) -> TaskRecord | Outcome:
        """Claim attempt `attempt` of a claimable `record`: the claimed record, or why it may not run."""
        ...

    def run(self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any]) -> Outcome:
        """Run a claimed attempt and write its outcome."""
        ...

    def write(self, step: Callable[[], T], patient: bool = False) -> T:
        """Run a store call, retrying while the store is busy or briefly unreachable."""
        ...


class ReceiptRules:
    """The record-reading half of the receipt rules, for one executor."""

    def __init__(self, runner: AttemptRunner) -> None:
        self.runner = runner

    @property
    def app(self) -> Decortask:
        return self.runner.app

    def receive(self, message: Message, queue: str, task: Task[Any, Any] | None) -> Outcome:
        """The receipt rules, from a fresh read of the record."""
        runner, store = self.runner, self.app.store
        record = runner.write(lambda: store.get(message.id))
        if record is None:
            # Published by another producer (or the schedule entry raced its record): record it now.
            record = runner.write(lambda: self._create_or_get(message, queue))
            if record.id != message.id:
                logger.info("task %s skipped: idempotency key held by task %s", message.id, record.id)
                return Outcome(Settle.ACK, record.status, Reason.DUPLICATE)
        if record.status.terminal:
            logger.info(
                "duplicate delivery of task %s (already %s): acked, not run", record.id, record.status
            )
            return Outcome(Settle.ACK, record.status, Reason.DUPLICATE)
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
                return Outcome(Settle.ACK, record.status, Reason.STALE)
            if message.eta is not None and message.eta > runner.clock() + ETA_TOLERANCE:
                return self._defer(record, message)
            return self._start(record, message, queue, task, message.attempt)
        return Outcome(Settle.ACK, record.status, Reason.UNEXPECTED_STATE)

    def _start(
        self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any] | None, attempt: int
    ) -> Outcome:
        claimed = self.runner.admit(record, message, task, attempt)
        if isinstance(claimed, Outcome):
            return claimed
        assert task is not None  # admit refuses an unregistered task
        return self.runner.run(claimed, message, queue, task)

    def _defer(self, record: TaskRecord, message: Message) -> Outcome:
        """A message whose eta lies ahead (another producer set it): park it in the schedule, then ack."""
        entry = schedule_entry(message, record.queue, float(message.eta or 0.0))
        runner, store = self.runner, self.app.store
        if record.status is TaskStatus.PENDING:
            done = runner.write(
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
                return Outcome(Settle.ACK, None, Reason.LOST_CLAIM)
        else:
            runner.write(lambda: store.add_schedule(entry))
        logger.info("task %s has an eta %.1f s ahead: scheduled", record.id, entry.due_at - clock.now())
        return Outcome(Settle.ACK, TaskStatus.SCHEDULED, Reason.DEFERRED)

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
        runner = self.runner
        if record.owner is not None and not runner.is_orphan(record) and runner.owner_alive(record.owner):
            return self._recheck_later(record, message)
        # The owner died mid-task: settled by the one rule for interrupted attempts. An opted-in task's next
        # attempt is held back in the schedule (a safety net should this worker die too) and run here now:
        # this delivery has waited out the dead worker's lease already, a trip through the schedule and the
        # broker would only add to it.
        hold = self.app.settings.lease_timeout
        settled = runner.write(
            lambda: recovery.settle_interrupted(
                self.app, record, message, Reason.WORKER_LOST, current=record, hold=hold
            )
        )
        if settled.record is None or settled.entry is None or settled.next_message is None:
            return Outcome(Settle.ACK, settled.status, settled.verdict.reason)
        nxt = settled.next_message
        claimed = runner.admit(settled.record, nxt, task, nxt.attempt)
        # Claimed, or settled otherwise (expired, max_deliveries, claimed elsewhere): the entry is not needed.
        self._drop_entry(settled.entry.id)
        if isinstance(claimed, Outcome):
            return claimed
        assert task is not None  # only a registered task is requeued
        return runner.run(claimed, nxt, queue, task)

    def _drop_entry(self, entry_id: str) -> None:
        # Best effort: an entry left behind publishes a copy of an attempt that ran, or runs, which the
        # receipt rules skip.
        try:
            self.app.store.remove_schedule([entry_id])
        except StoreError as exc:
            logger.warning(
                "could not remove schedule entry %s (%s); its copy will be skipped",
                entry_id,
                mask_text(str(exc)),
            )

    def _recheck_later(self, record: TaskRecord, message: Message) -> Outcome:
        """A delivery of a task that a live worker is running: a duplicate, unless that worker is dying.

        Acking it outright would lose the task if the owner died a moment ago (RabbitMQ redelivers at
        once, before the heartbeat goes stale), so the message waits in the store's schedule until the
        owner's lease would have lapsed; by then the task has ended (skipped), or its owner is dead (the
        rules for an interrupted task apply), or it is still alive (checked again). The wait is counted
        from this worker's clock, not from the owner's heartbeat stamp: the owner's clock may be off by more
        than a lease (`clock.HeartbeatWatch`), and the stamp would then put the recheck in the past.
        """
        owner = record.owner or ""
        due = clock.now() + self.app.settings.lease_timeout + 1.0
        entry = schedule_entry(message, record.queue, due, slot="recheck")
        self.runner.write(lambda: self.app.store.add_schedule(entry))
        logger.info(
            "task %s is running on %s: this delivery is parked for %.1f s, then checked again",
            record.id,
            owner,
            due - clock.now(),
        )
        return Outcome(Settle.ACK, record.status, Reason.RUNNING_ELSEWHERE)
