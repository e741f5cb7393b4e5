"""Runs one decoded message to its next state and returns an Outcome; never touches the broker.

The receipt rules of DESIGN §2 start here: the store is consulted before anything runs, claims are
compare-and-set, and the store is written before the caller acks (write, then ack). The common delivery
(the next attempt of a claimable task) is claimed first, without a read; the record is read only when that
claim fails, and `receipt.ReceiptRules` (a collaborator, through `admit`, `run` and `write`) says what the
delivery is. Claims and outcomes go through a `StoreWriter`, which commits those of all pool threads
together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .aioloop import EventLoopThread
from .attempts import RunningTask, leave_user_code
from .clock import now as clock_now
from .context import TaskContext, activate, deactivate
from .errors import StoreError, TimeLimitExceeded
from .logbuffer import TaskLogBuffer
from .message import Message
from .middleware import (
    Middleware,
    around_coroutine,
    call_hooks,
    report_outcome,
)
from .outcomes import ExecutionOutcome, Outcome, Reason, Settle, as_reason, failure_outcome
from .receipt import ETA_TOLERANCE, ReceiptRules
from .records import ended_fields, failed_attempt_line, label, schedule_entry, succeeded_fields
from .retry import NO_RETRIES
from .security import mask_text
from .states import TaskStatus
from .store.base import LogLine, TaskRecord
from .store.writer import StoreWriter

if TYPE_CHECKING:
    from .app import Decortask
    from .task import Task

# Outcome and Settle live in outcomes.py; the worker and the pools import them from here too.
__all__ = ["Executor", "Outcome", "Settle"]

logger = logging.getLogger("decortask.worker")
T = TypeVar("T")
#: Longest exception message a worker's log line shows (the record keeps it whole).
LOGGED_MESSAGE_CHARS = 500


class Executor:
    """Executes messages for one worker identity against the app's store and registry."""

    def __init__(
        self,
        app: Decortask,
        worker_id: str,
        owner_alive: Callable[[str], bool] | None = None,
        store_retry_seconds: float = 10.0,
        clock: Callable[[], float] = clock_now,
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
        #: Log lines of attempts settling here, by task id, not written yet: they go with the outcome's write.
        self.unwritten_logs: dict[str, list[LogLine]] = {}
        self.event_loop = EventLoopThread()
        #: Called with each attempt just before its code runs (a process-pool child reports it to its parent).
        self.on_start: Callable[[RunningTask], None] | None = None
        self._stopping = False
        self._writer: StoreWriter | None = None
        self.receipt = ReceiptRules(self)

    @property
    def writer(self) -> StoreWriter:
        """The group-commit writer for the app's current store (a reopened store gets a new one)."""
        store = self.app.store
        writer = self._writer
        if writer is None or writer.store is not store:
            writer = self._writer = StoreWriter(store)
        return writer

    def is_orphan(self, record: TaskRecord) -> bool:
        """A RUNNING record this worker owns but no longer runs (its outcome could not be written).

        Only once it was claimed longer than `lease_timeout` ago: between a claim and the start of the
        task's code, a record is owned here and not yet in `running`.
        """
        return (
            record.owner == self.worker_id
            and record.id not in self.running
            and record.id not in self.settling
            and clock_now() - (record.started_at or 0.0) > self.app.settings.lease_timeout
        )

    def request_stop_all(self) -> None:
        """Make `should_stop()` true for every running task, and for tasks that start from now on."""
        self._stopping = True
        for run in list(self.running.values()):
            run.context.request_stop()

    # -- receipt rules -------------------------------------------------------------------------------------

    def execute(self, message: Message, queue: str) -> Outcome:
        """Apply the receipt rules, run the task if they allow it, write the next state."""
        task = self.app.registry.find(message.task)
        if task is not None:
            claimed = self._claim_first(message, task)
            if claimed is not None:
                return self.run(claimed, message, queue, task)
        return self.receipt.receive(message, queue, task)

    def _claim_first(self, message: Message, task: Task[Any, Any]) -> TaskRecord | None:
        """Claim the message's attempt without reading the record first: the path of nearly every delivery.

        Only a message that may run now (not expired, no eta ahead) is claimed this way, and only from a
        claimable record one attempt behind it with deliveries to spare: exactly what `_start` would claim
        after reading it (`admit`). None: not claimed, and the receipt rules must read the record to say why.
        """
        now = self.clock()
        if message.expires is not None and message.expires <= now:
            return None
        if message.eta is not None and message.eta > now + ETA_TOLERANCE:
            return None
        limit = task.options.max_deliveries or self.app.settings.max_deliveries
        writer = self.writer
        started_at = clock_now()
        return self._claim(
            lambda: writer.claim(
                message.id,
                message.attempt,
                limit,
                owner=self.worker_id,
                started_at=started_at,
                finished_at=None,
            ),
            message.id,
            message.attempt,
            started_at,
        )

    def _claim(
        self, claim: Callable[[], TaskRecord | None], task_id: str, attempt: int, started_at: float
    ) -> TaskRecord | None:
        """Run a claim through `write`; one whose commit landed but whose reply was lost is still ours.

        A store error after the commit (a Redis connection reset after the script ran) makes `write`
        retry, and the retry fails the compare-and-set against this very claim: without this check the
        worker would park its own claim as running elsewhere, and the task would end `worker_lost`.
        """
        failed = False

        def step() -> TaskRecord | None:
            nonlocal failed
            try:
                return claim()
            except StoreError:
                failed = True
                raise

        claimed = self.write(step)
        if claimed is None and failed:
            current = self.write(lambda: self.app.store.get(task_id))
            if (
                current is not None
                and current.status is TaskStatus.RUNNING
                and current.owner == self.worker_id
                and current.attempt == attempt
                and current.started_at == started_at
            ):
                return current
        return claimed

    def refuse(self, task_id: str | None, reason: str, detail: str) -> Outcome:
        """The outcome of a refused message: dead-lettered, and its task FAILED (`reason`) when known.

        Every refusal goes through here or `_refuse_record` (bad input, `integrity_error`,
        `payload_too_large`, `unregistered_task`, `max_deliveries`): a message whose task id can be read
        never leaves that task PENDING for a `get()` that could only time out.

        Args:
            task_id: the envelope's id, if it could be read (None: nothing in the store can be told).
            reason: a `Reason` (or its text, as the decoder's errors carry it).
        """
        reason = as_reason(reason)
        if task_id is None:
            return Outcome(Settle.DEAD_LETTER, None, reason, detail)
        record = self.write(lambda: self.app.store.get(task_id))
        if record is None:
            return Outcome(Settle.DEAD_LETTER, None, reason, detail, task_id=task_id)
        if record.status.terminal or (
            record.status is TaskStatus.RUNNING and record.owner and self.owner_alive(record.owner)
        ):
            # Ended already; or a forged or corrupt copy, which must not fail a task that is legitimately
            # running.
            return Outcome(Settle.DEAD_LETTER, None, reason, detail, task_id=record.id, task_name=record.name)
        return self._refuse_record(record, reason, detail)

    def _refuse_record(
        self, record: TaskRecord, reason: Reason | str, detail: str, error_type: str | None = None
    ) -> Outcome:
        """Dead-letter the message of an unfinished task that may be failed (the caller checked): FAILED
        (`reason`), the refusal's detail replacing any earlier attempt's error."""
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.FAILED,
            expect=record.status,
            reason=reason,
            error_type=error_type,
            error_message=detail,
            traceback=None,
        )
        status = TaskStatus.FAILED if done else None
        return Outcome(Settle.DEAD_LETTER, status, reason, detail, task_id=record.id, task_name=record.name)

    # -- running -------------------------------------------------------------------------------------------

    def admit(
        self, record: TaskRecord, message: Message, task: Task[Any, Any] | None, attempt: int
    ) -> TaskRecord | Outcome:
        """Claim attempt `attempt` of the claimable `record` for `message` (the receipt rules read it).

        Returns the claimed (RUNNING) record, or the outcome of a delivery that may not run: expired,
        unregistered, out of deliveries (each written to the store), or claimed elsewhere first.
        """
        now = clock_now()
        if message.expires is not None and message.expires <= self.clock():
            self._finish(
                record.id, record.attempt, TaskStatus.CANCELLED, expect=record.status, reason=Reason.EXPIRED
            )
            logger.info("task %s expired before it ran: CANCELLED (expired)", label(record))
            return Outcome(Settle.ACK, TaskStatus.CANCELLED, Reason.EXPIRED)
        if task is None:
            detail = self.app.registry.unknown_message(message.task)
            return self._refuse_record(
                record, Reason.UNREGISTERED_TASK, detail, error_type="UnknownTaskError"
            )
        limit = task.options.max_deliveries or self.app.settings.max_deliveries
        if record.deliveries >= limit:
            detail = (
                f"attempt {attempt} was taken up {record.deliveries} times by workers that died with it "
                f"(max_deliveries={limit}); fix the task, then `decortask dlq replay` or `decortask retry` it"
            )
            return self._refuse_record(record, Reason.MAX_DELIVERIES, detail)
        writer = self.writer
        claimed = self._claim(
            lambda: writer.transition(
                record.id,
                TaskStatus.RUNNING,
                expect={record.status},
                expect_attempt=record.attempt,
                attempt=attempt,
                owner=self.worker_id,
                started_at=now,
                finished_at=None,
                deliveries=record.deliveries + 1,
            ),
            record.id,
            attempt,
            now,
        )
        if claimed is None:
            logger.info("task %s was claimed elsewhere first: acked, not run", record.id)
            return Outcome(Settle.ACK, None, Reason.LOST_CLAIM)
        return claimed

    def run(self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any]) -> Outcome:
        """Run a claimed attempt and write its outcome."""
        # From the claim until its outcome is written the attempt is live here, even after its code returned.
        self.settling.add(record.id)
        try:
            return self._run_claimed(record, message, queue, task)
        finally:
            self.settling.discard(record.id)
            self.unwritten_logs.pop(record.id, None)

    def _run_claimed(self, record: TaskRecord, message: Message, queue: str, task: Task[Any, Any]) -> Outcome:
        store = self.app.store
        attempt = record.attempt
        try:
            bound = task.bind_arguments(tuple(message.args), message.kwargs)
        except TypeError as exc:
            return self._fail_outright(
                record, Reason.BAD_ARGUMENTS, "TypeError", exc, "without running: TypeError"
            )
        log = TaskLogBuffer(store, record.id, self.app.settings.log_flush_interval, attempt)
        ctx = TaskContext(
            task_id=record.id,
            name=task.name,
            attempt=attempt,
            queue=queue,
            tags=dict(message.tags),
            worker_id=self.worker_id,
            _log=log,
            _progress_sink=log.set_progress,  # these writes carry the attempt's waiting log lines
            _output_sink=log.set_output,
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
        middleware = self.app.middleware  # read once: the no-middleware path allocates nothing more
        token = activate(ctx)
        began = time.monotonic()
        try:
            verdict = self._call(run, task, bound, middleware)
        finally:
            deactivate(token)
            self.running.pop(record.id, None)
            if lines := log.close():
                self.unwritten_logs[record.id] = lines
        return self._store_verdict(run, task, verdict, time.monotonic() - began)

    def _call(
        self,
        run: RunningTask,
        task: Task[Any, Any],
        bound: inspect.BoundArguments,
        middleware: list[Middleware],
    ) -> ExecutionOutcome:
        """Run the task's code between its execute hooks (in this thread, or for a coroutine on the loop)."""
        ctx, message = run.context, run.message
        failure: BaseException | None = None
        value: Any = None
        if middleware and not task.is_async:
            call_hooks(middleware, "before_execute", self.app, message, ctx)
        try:
            try:
                value = task.run(ctx, bound)
                if inspect.iscoroutine(value):
                    if middleware:  # the hooks run in the coroutine's own asyncio task
                        judge = functools.partial(run.judge, task)
                        value = around_coroutine(middleware, self.app, message, ctx, value, judge)
                    run.async_future = self.event_loop.submit(ctx, value)
                    value = run.async_future.result()
                elif inspect.isawaitable(value):
                    value = asyncio.run(_await(value))
            finally:
                leave_user_code(run)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failure = exc
        verdict = run.judge(task, value, failure)
        if middleware and not task.is_async:
            report_outcome(middleware, self.app, message, ctx, verdict)
        return verdict

    def _store_verdict(
        self, run: RunningTask, task: Task[Any, Any], verdict: ExecutionOutcome, runtime: float
    ) -> Outcome:
        """Write the attempt's outcome to the store (write, then the caller acks), and log it in one line.

        Args:
            runtime: seconds the task's code ran.
        """
        record, attempt = run.record, run.record.attempt
        if verdict.status is TaskStatus.CANCELLED:
            return self._cancelled(record, forced=run.forced, runtime=runtime)
        if verdict.reason == Reason.RESULT_NOT_SERIALIZABLE:
            how = f"in {runtime:.3f} s on attempt {attempt}"
            exc = verdict.exception
            return self._fail_outright(record, verdict.reason, "ArgumentEncodingError", exc, how, ran=True)
        if verdict.exception is not None:
            return self._failed(record, run.message, verdict, persist=task.options.persist, runtime=runtime)
        succeeded = succeeded_fields(self.app.settings, clock_now(), task.options.persist, verdict.result)
        if self._finish(record.id, attempt, TaskStatus.SUCCESS, **succeeded):
            # Name, id and time only: never the arguments or the result.
            logger.info(
                "task %s succeeded in %.3f s%s",
                label(record),
                runtime,
                f" on attempt {attempt}" if attempt > 1 else "",
            )
        return Outcome(Settle.ACK, TaskStatus.SUCCESS, ran=True)

    def _failed(
        self,
        record: TaskRecord,
        message: Message,
        verdict: ExecutionOutcome,
        *,
        persist: bool,
        runtime: float | None = None,
    ) -> Outcome:
        """Write a failed attempt as `verdict` decided (`outcomes.failure_outcome`): RETRYING with its next
        attempt scheduled, or FAILED; and log it.

        The attempt's error also goes into the task's log as history (`failed_attempt_line`, in the outcome's
        write): a later attempt that succeeds clears the record's error, and `decortask retry` does too.

        Args:
            verdict: a RETRYING (with its delay) or FAILED outcome carrying the exception.
            persist: the task's `persist` (how long a FAILED record is kept).
            runtime: seconds the task's code ran; None: since the attempt was claimed.
        """
        exc = verdict.exception
        assert exc is not None
        attempt = record.attempt
        delay = verdict.retry_delay if verdict.will_retry else None
        if runtime is None:
            runtime = max(0.0, clock_now() - (record.started_at or clock_now()))
        error: dict[str, Any] = {
            "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "error_message": mask_text(str(exc)),
            "traceback": mask_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))),
        }
        self.unwritten_logs.setdefault(record.id, []).append(  # after the attempt's own lines
            failed_attempt_line(attempt, error["error_type"], error["error_message"], delay, clock_now())
        )
        if delay is not None:
            now = clock_now()
            nxt = dataclasses.replace(message, attempt=attempt + 1, eta=now + delay)
            entry = schedule_entry(nxt, record.queue, now + delay)
            writer, lines = self.writer, self.unwritten_logs.pop(record.id, ())
            done = self.write(
                lambda: writer.transition(
                    record.id,
                    TaskStatus.RETRYING,
                    expect={TaskStatus.RUNNING},
                    expect_attempt=attempt,
                    schedule=entry,
                    log_lines=lines,
                    scheduled_for=entry.due_at,
                    deliveries=0,  # the attempt settled (it raised); the next one starts a fresh count
                    **error,
                ),
                patient=True,
            )
            if done is not None:
                logger.info(
                    "task %s attempt %d failed in %.3f s: %s: %s; attempt %d in %.2f s",
                    label(record),
                    attempt,
                    runtime,
                    error["error_type"],
                    _shown(error["error_message"]),
                    attempt + 1,
                    delay,
                )
                return Outcome(Settle.ACK, TaskStatus.RETRYING, ran=True)
            return Outcome(Settle.ACK, None, Reason.LOST_CLAIM, ran=True)
        ended = ended_fields(self.app.settings, clock_now(), persist)
        reason = verdict.reason
        if self._finish(record.id, attempt, TaskStatus.FAILED, reason=reason, **ended, **error):
            logger.warning(
                "task %s failed%s in %.3f s on attempt %d: %s: %s",
                label(record),
                f" ({reason})" if reason else "",
                runtime,
                attempt,
                error["error_type"],
                _shown(error["error_message"]),
            )
        return Outcome(Settle.ACK, TaskStatus.FAILED, ran=True)

    def _fail_outright(
        self,
        record: TaskRecord,
        reason: Reason,
        error_type: str,
        exc: BaseException | None,
        how: str,
        *,
        ran: bool = False,
    ) -> Outcome:
        """Write FAILED (`reason`) with no retry: a failure that running again cannot mend; and log it.

        Args:
            how: the words the log line puts between the reason and the error message.
        """
        detail = mask_text(str(exc))
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.FAILED,
            reason=reason,
            error_type=error_type,
            error_message=detail,
        )
        if done:
            logger.warning("task %s failed (%s) %s: %s", label(record), reason, how, _shown(detail))
        return Outcome(Settle.ACK, TaskStatus.FAILED, reason, ran=ran)

    def _cancelled(self, record: TaskRecord, *, forced: bool, runtime: float | None = None) -> Outcome:
        """Write the CANCELLED outcome of an attempt that stopped (cooperatively, or by force) on request."""
        how = " (stopped by force)" if forced else ""
        done = self._finish(
            record.id,
            record.attempt,
            TaskStatus.CANCELLED,
            reason=Reason.CANCELLED,
            error_message=f"cancelled while running{how}",
        )
        if done:
            after = f", after {runtime:.3f} s" if runtime is not None else ""
            logger.info("task %s cancelled while running%s%s", label(record), how, after)
        return Outcome(Settle.ACK, TaskStatus.CANCELLED if done else None, Reason.CANCELLED, ran=True)

    def settle_stopped(self, record: TaskRecord, message: Message, reason: str) -> Outcome:
        """Write the outcome of an attempt stopped by force in another process (a process-pool child).

        Args:
            record: the attempt's RUNNING record.
            message: the message that started it.
            reason: why it was stopped: `cancelled` (ends CANCELLED) or `timeout` (a failed attempt with
                `TimeLimitExceeded`: retried if retries remain, else FAILED `timeout`).
        """
        if reason != Reason.TIMEOUT:
            return self._cancelled(record, forced=True)
        task = self.app.registry.find(record.name)
        limit = f" of {task.options.timeout} s" if task is not None else ""
        exc = TimeLimitExceeded(
            f"attempt {record.attempt} ran past its time limit{limit} and was stopped by force"
        )
        # A task unknown here (its child knew it) is not retried: its retry policy is unknown too.
        policy = task.options.retry_policy if task is not None else NO_RETRIES
        persist = task.options.persist if task is not None else record.persist
        return self._failed(record, message, failure_outcome(policy, record.attempt, exc), persist=persist)

    # -- store writes --------------------------------------------------------------------------------------

    def _finish(
        self,
        task_id: str,
        attempt: int,
        status: TaskStatus,
        *,
        expect: TaskStatus = TaskStatus.RUNNING,
        **changes: Any,
    ) -> bool:
        """Write the terminal `status` of attempt `attempt`; False if the record changed meanwhile."""
        # Callers that know the task pass its own `persist` (ended_fields); otherwise it is kept as history.
        changes = {**ended_fields(self.app.settings, clock_now()), **changes}
        writer, lines = self.writer, self.unwritten_logs.pop(task_id, ())
        done = self.write(
            lambda: writer.settle(task_id, status, expect, attempt, lines, **changes),
            patient=True,
        )
        if not done:
            logger.warning(
                "task %s changed while attempt %d ran; its %s was not recorded", task_id, attempt, status
            )
        return done

    def write(self, step: Callable[[], T], patient: bool = False) -> T:
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


def _shown(message: str) -> str:
    """An (already masked) exception message as a log line shows it: at most LOGGED_MESSAGE_CHARS."""
    return message if len(message) <= LOGGED_MESSAGE_CHARS else message[:LOGGED_MESSAGE_CHARS] + "..."


async def _await(value: Any) -> Any:
    return await value
