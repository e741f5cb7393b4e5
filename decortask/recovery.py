"""Interrupted attempts: one decision for every path that finds an attempt that will not finish.

Four paths find one (DESIGN §2): a redelivery whose record is RUNNING under a dead worker (after a
SIGKILL), a shutdown past the grace period, the reaper (RUNNING records of dead workers that no redelivery
resolved), and a process-pool child that died. All four settle it through `settle_interrupted`, and
`decide_interrupted` alone decides what becomes of it: a cancelled task ends CANCELLED; a task opted in
goes back to PENDING with its next attempt in the store's schedule, written in the same atomic step as the
state change, so a crash between the two loses nothing; any other ends INTERRUPTED with the path's reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import clock
from .message import Message
from .middleware import notify_interrupt
from .outcomes import Reason
from .records import ended_fields, label, message_from_record, schedule_entry
from .states import TaskStatus
from .store.base import ScheduleEntry, TaskQuery, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .security import MessageCipher
    from .task import Task

logger = logging.getLogger("decortask.worker")

REAP_BATCH = 500


@dataclass(frozen=True)
class InterruptVerdict:
    """What becomes of an interrupted attempt.

    Attributes:
        status: `CANCELLED`, `PENDING` (the next attempt is queued) or `INTERRUPTED`.
        reason: `cancelled`, or the path's reason (`worker_lost`, `shutdown`).
        deliveries: for `PENDING`, the delivery count the next attempt's claim adds to.
    """

    status: TaskStatus
    reason: Reason
    deliveries: int = 0

    @property
    def requeued(self) -> bool:
        return self.status is TaskStatus.PENDING


def decide_interrupted(task: Task[Any, Any] | None, record: TaskRecord, reason: Reason) -> InterruptVerdict:
    """The one rule for an attempt that will not finish (DESIGN §2).

    Args:
        task: the registered task (None: unknown here, so never requeued).
        record: the task's current record (its cancel request, its delivery count).
        reason: why the attempt will not finish: `worker_lost` or `shutdown`.
    """
    if record.cancel_requested_at is not None:
        # A cancelled task is never requeued, whoever interrupts it.
        return InterruptVerdict(TaskStatus.CANCELLED, Reason.CANCELLED)
    if task is not None and task.options.requeue_on_interrupt:
        # An orderly shutdown is not a crash; a lost worker counts toward max_deliveries.
        deliveries = 0 if reason == Reason.SHUTDOWN else record.deliveries
        return InterruptVerdict(TaskStatus.PENDING, reason, deliveries)
    return InterruptVerdict(TaskStatus.INTERRUPTED, reason)


@dataclass(frozen=True)
class Interrupted:
    """An interrupted attempt, settled.

    Attributes:
        verdict: what `decide_interrupted` decided.
        record: the record as written; None when the attempt had moved on and nothing was written.
        entry: when requeued, the schedule entry that publishes the next attempt.
        next_message: when requeued, that entry's message.
    """

    verdict: InterruptVerdict
    record: TaskRecord | None
    entry: ScheduleEntry | None = None
    next_message: Message | None = None

    @property
    def status(self) -> TaskStatus | None:
        """The status written, or None if the record had moved on."""
        return self.verdict.status if self.record is not None else None


def settle_interrupted(
    app: Decortask,
    record: TaskRecord,
    message: Message | None,
    reason: Reason,
    *,
    current: TaskRecord | None = None,
    hold: float = 0.0,
) -> Interrupted:
    """Settle a RUNNING attempt that will not finish, as `decide_interrupted` says (compare-and-set on its
    status and attempt, so two paths never both settle one attempt).

    Args:
        app: the app whose store holds the record.
        record: the record as it was when the attempt ran (status RUNNING, its attempt number).
        message: the message that started the attempt, if known (else one is rebuilt from the record).
        reason: `worker_lost` or `shutdown`.
        current: the record as the caller just read it; None: read here (a cancel request may have come
            since `record` was read).
        hold: seconds before a requeued attempt's schedule entry falls due: a caller that claims the next
            attempt itself holds it back, so that no scheduler publishes a copy meanwhile.
    """
    if current is None:
        current = app.store.get(record.id) or record
    verdict = decide_interrupted(app.registry.find(record.name), current, reason)
    now = clock.now()
    entry: ScheduleEntry | None = None
    nxt: Message | None = None
    if verdict.status is TaskStatus.PENDING:
        nxt = _next_message(record, message, app.cipher)
        entry = schedule_entry(nxt, record.queue, now + hold)
        changes: dict[str, Any] = {"owner": None, "reason": None, "deliveries": verdict.deliveries}
    elif verdict.status is TaskStatus.CANCELLED:
        changes = {
            "reason": Reason.CANCELLED,
            "error_message": f"cancelled; its worker stopped ({reason}) before the task did",
            **ended_fields(app.settings, now, record.persist),
        }
    else:
        changes = {
            "reason": reason,
            "error_message": f"attempt {record.attempt} was interrupted ({reason}) and the task is not opted "
            "in to requeue_on_interrupt; re-run it with `decortask retry ID`",
            **ended_fields(app.settings, now, record.persist),
        }
    done = app.store.transition(
        record.id,
        verdict.status,
        expect={TaskStatus.RUNNING},
        expect_attempt=record.attempt,
        schedule=entry,
        **changes,
    )
    if done is None:
        return Interrupted(verdict, None)
    _log(record, verdict, reason, now)
    if verdict.status is not TaskStatus.CANCELLED:
        notify_interrupt(app, message, record, reason)
    if done.workflow and done.status.terminal:  # the reaper has no message: what follows is created here
        from .workflow import continue_workflow

        continue_workflow(app, done.id, done.workflow, lambda step: step())
    return Interrupted(verdict, done, entry, nxt)


def interrupt(app: Decortask, record: TaskRecord, message: Message | None, reason: str) -> TaskStatus | None:
    """`settle_interrupted` for the shutdown and process-pool paths; returns the new status, or None if the
    attempt had moved on.

    Args:
        reason: `shutdown` or `worker_lost` (a `Reason`, or its text).
    """
    return settle_interrupted(app, record, message, Reason(reason)).status


def reap(
    app: Decortask, owner_alive: Callable[[str], bool], orphaned: Callable[[TaskRecord], bool] | None = None
) -> int:
    """Interrupt RUNNING records whose owner is dead (`owner_alive`, asked once per owner); returns how many
    were settled.

    Any worker may run this at any time: every change is a compare-and-set on (RUNNING, attempt), so two
    reapers, or a reaper and a redelivery, never both act on one attempt.
    """
    settled = 0
    running = app.store.list_tasks(TaskQuery(statuses=frozenset({TaskStatus.RUNNING}), limit=REAP_BATCH))
    alive: dict[str, bool] = {}
    for record in running:
        lost_here = orphaned is not None and orphaned(record)
        if record.owner is not None and not lost_here:
            if record.owner not in alive:
                alive[record.owner] = owner_alive(record.owner)
            if alive[record.owner]:
                continue
        if settle_interrupted(app, record, None, Reason.WORKER_LOST).status is not None:
            settled += 1
    return settled


def _log(record: TaskRecord, verdict: InterruptVerdict, reason: Reason, now: float) -> None:
    if verdict.status is TaskStatus.CANCELLED:
        logger.info("task %s cancelled; its worker stopped (%s) before it did", label(record), reason)
        return
    ran_for = f" after {now - record.started_at:.1f} s" if record.started_at else ""
    lost = f" (worker {record.owner} was lost)" if reason == Reason.WORKER_LOST and record.owner else ""
    if verdict.requeued:
        then = f"; attempt {record.attempt + 1} is queued"
    else:
        then = ": INTERRUPTED, not run again (not opted in to requeue_on_interrupt)"
    logger.warning(
        "task %s attempt %d interrupted (%s)%s%s%s",
        label(record),
        record.attempt,
        reason,
        ran_for,
        lost,
        then,
    )


def _next_message(record: TaskRecord, message: Message | None, cipher: MessageCipher | None) -> Message:
    # A rebuilt message is encrypted like a first publish: workers with keys refuse plaintext.
    if message is not None:
        return dataclasses.replace(message, attempt=record.attempt + 1, eta=None)
    return message_from_record(record, cipher)
