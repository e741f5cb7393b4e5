"""Runs one decoded message to its next state and returns an Outcome; never touches the broker.

The receipt rules of DESIGN §2 live here: the store is consulted before anything runs, claims are
compare-and-set, and the store is written before the caller acks (write, then ack).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from .aioloop import EventLoopThread
from .attempts import RunningTask, leave_user_code
from .context import TaskContext, activate, deactivate
from .errors import ArgumentEncodingError, StoreError, TaskInterrupted, TimeLimitExceeded
from .message import Message, encode_json_value
from .records import record_from_message
from .security import mask_text
from .states import CLAIMABLE, TaskStatus
from .store.base import ScheduleEntry, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .task import Task

logger = logging.getLogger("decortask.worker")
T = TypeVar("T")
#: A message whose eta is at most this far ahead runs now (clocks of different hosts differ a little).
ETA_TOLERANCE = 1.0


class Settle(str, Enum):
    """What the consumer thread does with the delivery once the executor is done."""

    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Outcome:
    """The executor's verdict for one delivery."""

    settle: Settle
    status: TaskStatus | None = None
    reason: str | None = None
    detail: str = ""
    ran: bool = False


class Executor:
    """Executes messages for one worker identity against the app's store and registry."""

    def __init__(
        self,
        app: Decortask,
        worker_id: str,
        owner_alive: Callable[[str], bool] | None = None,
        store_retry_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.app = app
        self.worker_id = worker_id
        self.owner_alive = owner_alive or (lambda owner: True)
        self.store_retry_seconds = store_retry_seconds
        #: Attempts running now, by task id (read by the worker's shutdown; dict updates are atomic).
        self.running: dict[str, RunningTask] = {}
        #: Ids of attempts claimed here whose outcome is not written yet (a superset of `running`'s keys).
        self.settling: set[str] = set()
        self.event_loop = EventLoopThread()
        #: Called with each attempt just before its code runs (a process-pool child reports it to its parent).
        self.on_start: Callable[[RunningTask], None] | None = None
        self._stopping = False

    def is_orphan(self, record: TaskRecord) -> bool:
        """A RUNNING record this worker owns but no longer runs (its outcome could not be written).

        Only once it was claimed longer than `lease_timeout` ago: between a claim and the start of the
        task's code, a record is owned here and not yet in `running`.
        """
        return (
            record.owner == self.worker_id
            and record.id not in self.running
            and record.id not in self.settling
            and time.time() - (record.started_at or 0.0) > self.app.settings.lease_timeout
        )

    def request_stop_all(self) -> None:
        """Make `should_stop()` true for every running task, and for tasks that start from now on."""
        self._stopping = True
        for run in list(self.running.values()):
            run.context.request_stop()

    # -- receipt rules -------------------------------------------------------------------------------------

    def execute(self, message: Message, queue: str) -> Outcome:
        """Apply the receipt rules, run the task if they allow it, write the next state."""
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
        task = self.app.registry.find(message.task)
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

    def refuse(self, task_id: str, reason: str, detail: str) -> TaskStatus | None:
        """Mark a known, unfinished task FAILED because its message was refused (e.g. `integrity_error`)."""
        record = self._write(lambda: self.app.store.get(task_id))
        if record is None or record.status.terminal:
            return None
        if record.status is TaskStatus.RUNNING and record.owner and self.owner_alive(record.owner):
            return None  # a forged or corrupt copy must not fail a task that is legitimately running
        done = self._finish(
            task_id,
            record.attempt,
            TaskStatus.FAILED,
            expect=record.status,
            reason=reason,
            error_message=detail,
        )
        return TaskStatus.FAILED if done else None

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
                "task %s lost its worker %s; running attempt %d", record.id, record.owner, record.attempt + 1
            )
            return self._start(record, message, queue, task, attempt=record.attempt + 1)
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.INTERRUPTED,
            expect=TaskStatus.RUNNING,
            reason="worker_lost",
            error_message=f"worker {record.owner} died while running attempt {record.attempt}",
        )
        logger.warning(
            "task %s interrupted: worker %s was lost (not opted in to requeue)", record.id, record.owner
        )
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

    # -- running -------------------------------------------------------------------------------------------

    def _start(
        self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any] | None, attempt: int
    ) -> Outcome:
        store = self.app.store
        now = time.time()
        if message.expires is not None and message.expires <= self.clock():
            self._finish(
                record.id, record.attempt, TaskStatus.CANCELLED, expect=record.status, reason="expired"
            )
            logger.info("task %s expired before it ran: CANCELLED (expired)", record.id)
            return Outcome(Settle.ACK, TaskStatus.CANCELLED, "expired")
        if task is None:
            detail = self.app.registry.unknown_message(message.task)
            self._finish(
                record.id,
                record.attempt,
                TaskStatus.FAILED,
                expect=record.status,
                reason="unregistered_task",
                error_type="UnknownTaskError",
                error_message=detail,
            )
            logger.error("task %s dead-lettered: %s", record.id, detail)
            return Outcome(Settle.DEAD_LETTER, TaskStatus.FAILED, "unregistered_task", detail)
        limit = task.options.max_deliveries or self.app.settings.max_deliveries
        if record.deliveries >= limit:
            detail = (
                f"attempt {attempt} was taken up {record.deliveries} times by workers that died with it "
                f"(max_deliveries={limit}); fix the task, then `decortask dlq replay` or `decortask retry` it"
            )
            self._finish(
                record.id,
                record.attempt,
                TaskStatus.FAILED,
                expect=record.status,
                reason="max_deliveries",
                error_message=detail,
            )
            logger.error("task %s dead-lettered: %s", record.id, detail)
            return Outcome(Settle.DEAD_LETTER, TaskStatus.FAILED, "max_deliveries", detail)
        claimed = self._write(
            lambda: store.transition(
                record.id,
                TaskStatus.RUNNING,
                expect={record.status},
                expect_attempt=record.attempt,
                attempt=attempt,
                owner=self.worker_id,
                started_at=now,
                finished_at=None,
                deliveries=record.deliveries + 1,
            )
        )
        if claimed is None:
            logger.info("task %s was claimed elsewhere first: acked, not run", record.id)
            return Outcome(Settle.ACK, None, "lost_claim")
        return self._run(claimed, message, queue, task)

    def _run(self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any]) -> Outcome:
        # From the claim until its outcome is written the attempt is live here, even after its code returned.
        self.settling.add(record.id)
        try:
            return self._run_claimed(record, message, queue, task)
        finally:
            self.settling.discard(record.id)

    def _run_claimed(self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any]) -> Outcome:
        store = self.app.store
        attempt = record.attempt
        try:
            bound = task.bind_arguments(tuple(message.args), message.kwargs)
        except TypeError as exc:
            self._finish(
                record.id,
                attempt,
                TaskStatus.FAILED,
                reason="bad_arguments",
                error_type="TypeError",
                error_message=mask_text(str(exc)),
            )
            logger.error("task %s failed: bad arguments for %s", record.id, task.name)
            return Outcome(Settle.ACK, TaskStatus.FAILED, "bad_arguments", ran=False)
        ctx = TaskContext(
            task_id=record.id,
            name=task.name,
            attempt=attempt,
            queue=queue,
            tags=dict(message.tags),
            worker_id=self.worker_id,
            _log_sink=lambda line: store.append_log(record.id, line),
            _progress_sink=lambda progress, text: store.set_progress(record.id, progress, text),
        )
        if self._stopping:
            ctx.request_stop()
        timeout = task.options.timeout
        run = RunningTask(
            record,
            message,
            ctx,
            task.options.must_complete,
            threading.get_ident(),
            deadline=time.monotonic() + timeout if timeout else None,
        )
        self.running[record.id] = run
        if self.on_start is not None:
            self.on_start(run)
        token = activate(ctx)
        failure: BaseException | None = None
        value: Any = None
        try:
            try:
                value = task.run(ctx, bound)
                if inspect.iscoroutine(value):
                    run.async_future = self.event_loop.submit(ctx, value)
                    value = run.async_future.result()
                elif inspect.isawaitable(value):
                    value = asyncio.run(_await(value))
            finally:
                leave_user_code(run)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failure = TaskInterrupted() if isinstance(exc, CancelledError) and run.forced else exc
        finally:
            deactivate(token)
            self.running.pop(record.id, None)
        if run.stop_reason == "cancelled":
            self._finish(
                record.id,
                attempt,
                TaskStatus.CANCELLED,
                reason="cancelled",
                error_message="cancelled while running" + (" (stopped by force)" if run.forced else ""),
            )
            logger.info("task %s cancelled while running", record.id)
            return Outcome(Settle.ACK, TaskStatus.CANCELLED, "cancelled", ran=True)
        if run.stop_reason == "timeout":
            failure = TimeLimitExceeded(
                f"attempt {attempt} ran past its time limit of {timeout} s"
                + (" and was stopped by force" if run.forced else "")
            )
        if failure is not None:
            return self._failed(record, message, task, failure)
        try:
            result = encode_json_value(value, "the return value")
        except ArgumentEncodingError as exc:
            self._finish(
                record.id,
                attempt,
                TaskStatus.FAILED,
                reason="result_not_serializable",
                error_type="ArgumentEncodingError",
                error_message=str(exc),
            )
            return Outcome(Settle.ACK, TaskStatus.FAILED, "result_not_serializable", ran=True)
        ttl = self.app.settings.history_ttl if task.options.persist else self.app.settings.result_ttl
        self._finish(record.id, attempt, TaskStatus.SUCCESS, result=result, expires_at=time.time() + ttl)
        return Outcome(Settle.ACK, TaskStatus.SUCCESS, ran=True)

    def _failed(
        self, record: TaskRecord, message: Message, task: Task[Any, Any], exc: BaseException
    ) -> Outcome:
        attempt = record.attempt
        error: dict[str, Any] = {
            "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "error_message": mask_text(str(exc)),
            "traceback": mask_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))),
        }
        delay = task.options.retry_policy.next_delay(attempt, exc)
        if delay is not None:
            now = time.time()
            nxt = dataclasses.replace(message, attempt=attempt + 1, eta=now + delay)
            entry = ScheduleEntry(
                id=f"{record.id}:{attempt + 1}",
                task_id=record.id,
                queue=record.queue,
                due_at=now + delay,
                body=nxt.encode().decode(),
                priority=message.priority,
            )
            done = self._write(
                lambda: self.app.store.transition(
                    record.id,
                    TaskStatus.RETRYING,
                    expect={TaskStatus.RUNNING},
                    expect_attempt=attempt,
                    schedule=entry,
                    scheduled_for=entry.due_at,
                    deliveries=0,  # the attempt settled (it raised); the next one starts a fresh count
                    **error,
                ),
                patient=True,
            )
            if done is not None:
                logger.info(
                    "task %s attempt %d failed (%s); retry in %.2f s",
                    record.id,
                    attempt,
                    error["error_type"],
                    delay,
                )
                return Outcome(Settle.ACK, TaskStatus.RETRYING, ran=True)
            return Outcome(Settle.ACK, None, "lost_claim", ran=True)
        ttl = self.app.settings.history_ttl if task.options.persist else self.app.settings.result_ttl
        reason = "timeout" if isinstance(exc, TimeLimitExceeded) else None
        self._finish(
            record.id, attempt, TaskStatus.FAILED, reason=reason, expires_at=time.time() + ttl, **error
        )
        logger.warning("task %s failed on attempt %d: %s", record.id, attempt, error["error_type"])
        return Outcome(Settle.ACK, TaskStatus.FAILED, ran=True)

    def settle_stopped(self, record: TaskRecord, message: Message, reason: str) -> Outcome:
        """Write the outcome of an attempt stopped by force in another process (a process-pool child).

        Args:
            record: the attempt's RUNNING record.
            message: the message that started it.
            reason: why it was stopped: `cancelled` (ends CANCELLED) or `timeout` (a failed attempt with
                `TimeLimitExceeded`: retried if retries remain, else FAILED `timeout`).
        """
        task = self.app.registry.find(record.name)
        if reason == "timeout":
            limit = f" of {task.options.timeout} s" if task is not None else ""
            exc = TimeLimitExceeded(
                f"attempt {record.attempt} ran past its time limit{limit} and was stopped by force"
            )
            if task is not None:
                return self._failed(record, message, task, exc)
            done = self._finish(
                record.id,
                record.attempt,
                TaskStatus.FAILED,
                reason="timeout",
                error_type="decortask.errors.TimeLimitExceeded",
                error_message=str(exc),
            )
            return Outcome(Settle.ACK, TaskStatus.FAILED if done else None, "timeout", ran=True)
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.CANCELLED,
            reason="cancelled",
            error_message="cancelled while running (stopped by force)",
        )
        logger.info("task %s cancelled while running", record.id)
        return Outcome(Settle.ACK, TaskStatus.CANCELLED if done else None, "cancelled", ran=True)

    # -- store writes --------------------------------------------------------------------------------------

    def _finish(
        self,
        task_id: str,
        attempt: int,
        status: TaskStatus,
        *,
        expect: TaskStatus = TaskStatus.RUNNING,
        **changes: Any,
    ) -> TaskRecord | None:
        changes.setdefault("finished_at", time.time())
        if status.terminal and "expires_at" not in changes:
            changes["expires_at"] = time.time() + self.app.settings.history_ttl
        done = self._write(
            lambda: self.app.store.transition(
                task_id, status, expect={expect}, expect_attempt=attempt, **changes
            ),
            patient=True,
        )
        if done is None:
            logger.warning(
                "task %s changed while attempt %d ran; its %s was not recorded", task_id, attempt, status
            )
        return done

    def _write(self, step: Callable[[], T], patient: bool = False) -> T:
        """Run a store call, retrying while the store is busy or briefly unreachable.

        With `patient`, used for the outcome of an attempt that already ran, it keeps trying past the
        budget until the write lands or the worker shuts down: giving up would leave the record RUNNING
        under a live worker, and the outcome (a result, an error) lost with it.
        """
        deadline = time.monotonic() + self.store_retry_seconds
        pause = 0.05
        while True:
            try:
                return step()
            except StoreError as exc:
                if time.monotonic() >= deadline and not (patient and not self._stopping):
                    raise
                logger.warning("store write failed (%s); retrying", mask_text(str(exc)))
                time.sleep(pause)
                pause = min(pause * 2, 5.0 if patient else 1.0)


async def _await(value: Any) -> Any:
    return await value
