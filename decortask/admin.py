"""Operator actions on tasks: re-run a task that has ended, and purge a queue without losing track of tasks.

Both are built on the same rules as the worker (DESIGN §2): records change only by compare-and-set, and the
store is written before anything is published, so a crash at any point leaves work that the scheduler or
the receipt rules finish, never a PENDING record that nothing will ever run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BrokerUnavailable, MessageError, TaskNotFound, TaskStateConflict
from .message import Message, decode
from .outcomes import Reason
from .records import ended_fields, message_from_record
from .security import mask_text
from .states import CLAIMABLE, TERMINAL, TaskStatus
from .store.base import ScheduleEntry, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .handle import TaskHandle
    from .transport import ConsumerSession, Delivery

logger = logging.getLogger("decortask.admin")

#: What a re-opened record forgets about its previous attempt; `attempt` and the logs stay as history.
FRESH_ATTEMPT: dict[str, Any] = {
    "reason": None,
    "result": None,
    "error_type": None,
    "error_message": None,
    "traceback": None,
    "owner": None,
    "started_at": None,
    "finished_at": None,
    "scheduled_for": None,
    # Cleared so a re-opened record is never purged as an old terminal one while it waits.
    "expires_at": None,
    "progress": None,
    "progress_message": None,
    # A new attempt starts a new count: a task that ended FAILED (max_deliveries) must be able to run again.
    "deliveries": 0,
}
#: The reason a task gets when `decortask purge` deletes its message before it ran.
PURGED = Reason.PURGED


def retry_task(app: Decortask, task_id: str) -> TaskHandle[Any]:
    """Run a task that has ended (SUCCESS, FAILED, CANCELLED, INTERRUPTED) again, as a new attempt.

    Returns a handle on the task; `rerun_task` does the same and returns the re-opened record.
    """
    record = rerun_task(app, task_id)
    return app.handle(record.id, record.name)


def rerun_task(app: Decortask, task_id: str) -> TaskRecord:
    """`retry_task`, returning the task's record as re-opened (PENDING; the new attempt is `attempt + 1`).

    The record moves back to PENDING by compare-and-set (attempt unchanged), then a message for
    `attempt + 1` is published to the task's queue. Pressing retry twice makes one new attempt: the second
    call finds the task PENDING and raises `TaskStateConflict`.

    Raises:
        TaskNotFound: no record with this id (wrong store, or expired after `history_ttl`).
        TaskStateConflict: the task has not ended (it is pending, scheduled, retrying or running).
        BrokerUnavailable: the message could not be published now; the record is PENDING and a worker's
            scheduler publishes it once the broker is reachable.
    """
    record = app.store.get(task_id)
    if record is None:
        raise TaskNotFound(
            f"no task {task_id} in the store {app.store_url_masked}; check the id with `decortask tasks` "
            "(records are deleted history_ttl after they end)"
        )
    if not record.status.terminal:
        raise _not_ended(record)
    # Encrypted like a first publish: workers may accept only encrypted arguments.
    message = message_from_record(record, app.cipher)
    body = message.encode(app.settings.max_payload_bytes)
    reopened = reopen(app, record, body, record.queue)
    logger.info(
        "task %s (%s) re-run requested: attempt %d queued on %s",
        record.id,
        record.name,
        message.attempt,
        record.queue,
    )
    return reopened


def reopen(app: Decortask, record: TaskRecord, body: bytes, queue: str) -> TaskRecord:
    """Move a terminal `record` back to PENDING and publish `body` (its attempt `record.attempt + 1`).

    The message is written to the store's schedule, due now, in the same atomic step as the state change, and
    only then published directly. A crash (or a broker outage) after the state change therefore cannot leave a
    PENDING task without a message: any worker's scheduler publishes the entry. If both the scheduler and this
    function publish it, the second copy is a duplicate the receipt rules skip (same id, same attempt).

    Raises:
        TaskStateConflict: the record changed since it was read (someone else re-ran or changed it first).
        BrokerUnavailable: as for `retry_task`; the entry stays in the schedule.
    """
    entry = ScheduleEntry.for_attempt(
        record.id, record.attempt + 1, queue=queue, due_at=time.time(), body=body, priority=record.priority
    )
    updated = app.store.transition(
        record.id,
        TaskStatus.PENDING,
        expect=TERMINAL,
        expect_attempt=record.attempt,
        schedule=entry,
        **FRESH_ATTEMPT,
    )
    if updated is None:
        current = app.store.get(record.id)
        if current is None:
            raise TaskNotFound(f"task {record.id} was deleted from the store while it was being re-run")
        if current.status.terminal:  # re-run and ended again by someone else since it was read
            raise TaskStateConflict(
                f"task {record.id} changed while it was being re-run (now {current.status.value}, attempt "
                f"{current.attempt}); check it with `decortask show {record.id}` and retry again if needed",
                record.id,
                current.status,
            )
        raise _not_ended(current)
    publish_entry(app, entry, persistent=record.persist)
    return updated


def publish_entry(app: Decortask, entry: ScheduleEntry, *, persistent: bool) -> None:
    """Publish a schedule entry now and remove it from the schedule (see `reopen` for why both)."""
    try:
        app.transport.publish(
            entry.body.encode(), entry.queue, priority=entry.priority, persistent=persistent
        )
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(
            f"{exc}. Task {entry.task_id} is PENDING and its message waits in the store's schedule: "
            "a running worker publishes it as soon as the broker is reachable, nothing else to do"
        ) from None
    # If this removal fails or the process dies first, a scheduler publishes the entry once more: a duplicate
    # of an attempt that already ran or runs, which the receipt rules ack without running.
    app.store.remove_schedule([entry.id])


def _not_ended(record: TaskRecord) -> TaskStateConflict:
    if record.status is TaskStatus.RUNNING:
        owner = f" on worker {record.owner}" if record.owner else ""
        text = (
            f"task {record.id} is RUNNING (attempt {record.attempt}{owner}); only a task that has ended can "
            "be re-run: wait for it to end, or cancel it first"
        )
    else:
        text = (
            f"task {record.id} is already {record.status.value} (attempt {record.attempt + 1} is queued): it "
            "will run without a retry; retry it again only once it has ended"
        )
    return TaskStateConflict(text, record.id, record.status)


@dataclass(frozen=True)
class PurgeReport:
    """What `purge_queue` did: messages deleted, tasks marked CANCELLED (purged) because of it, and
    messages left because they could not be read."""

    queue: str
    deleted: int
    cancelled: int
    #: Messages the broker client could not read (see `fetch`); they are left in the queue.
    unreadable: int = 0


def purge_queue(app: Decortask, queue: str) -> PurgeReport:
    """Delete the ready messages of `queue`, marking each task they would have run CANCELLED (purged).

    Messages are taken one by one rather than with the broker's purge, because a task whose only message is
    deleted would otherwise stay PENDING forever. Messages held by a worker right now, and messages published
    while the purge runs, are not touched. Bodies are read with `decortask.message.decode` only (JSON); one
    that does not decode is just deleted. One the broker client cannot even read is left (and counted).
    """
    deleted = cancelled = unreadable = 0
    budget = app.transport.queue_size(queue)
    if budget == 0:
        return PurgeReport(queue, 0, 0)  # also avoids declaring a queue that does not exist
    session = app.transport.open_consumer([queue], prefetch=1, consume=False)
    try:
        for _ in range(budget):
            delivery, error = fetch(session, queue)
            if error is not None:
                unreadable += 1
                continue
            if delivery is None:
                break
            try:
                message = decode(
                    delivery.body, delivery.content_type, app.settings.max_payload_bytes, cipher=app.cipher
                )
            except (MessageError, RecursionError):  # RecursionError: json.loads on very deeply nested JSON
                message = None
            # Cancel first, then ack (write, then ack): a crash in between leaves the message, not a lost task.
            if message is not None and _cancel_purged(app, message):
                cancelled += 1
            session.ack(delivery)
            deleted += 1
    finally:
        session.close()
    logger.warning("purged %d messages from %s (%d tasks CANCELLED, purged)", deleted, queue, cancelled)
    if unreadable:
        logger.warning(
            "%d messages of %s could not be read by the broker client and were left", unreadable, queue
        )
    return PurgeReport(queue, deleted, cancelled, unreadable)


def fetch(session: ConsumerSession, queue: str) -> tuple[Delivery | None, str | None]:
    """One message of `queue`: (delivery, None); (None, None) when it is empty; or (None, why) when kombu
    could not read the next message.

    kombu refuses to hand over a message whose `compression` header does not match its body. That message
    stays held (unacked) by the session, so the next call returns the one after it, and closing the session
    gives it back: an operator command reports it instead of stopping at it.
    """
    try:
        return session.get(queue), None
    except session.connection_errors:
        raise
    except Exception as exc:
        return None, mask_text(f"{type(exc).__name__}: {exc}")


def _cancel_purged(app: Decortask, message: Message) -> bool:
    record = app.store.get(message.id)
    # Only the message that would run the task's next attempt; a stale duplicate leaves the task alone.
    if record is None or message.attempt <= record.attempt:
        return False
    if record.status not in CLAIMABLE:
        return False
    done = app.store.transition(
        record.id,
        TaskStatus.CANCELLED,
        expect={record.status},
        expect_attempt=record.attempt,
        reason=PURGED,
        error_message=f"its message was deleted from queue {record.queue} by a purge before it ran",
        scheduled_for=None,
        **ended_fields(app.settings, time.time(), record.persist),
    )
    return done is not None
