"""A running attempt's bookkeeping, shared by the executor, the supervisor and the process pool."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .context import TaskContext
from .errors import ArgumentEncodingError, TaskInterrupted, TimeLimitExceeded
from .message import Message, encode_json_value
from .outcomes import ExecutionOutcome, Reason, failure_outcome
from .states import TaskStatus
from .store.base import TaskRecord

if TYPE_CHECKING:
    from .task import Task


@dataclass
class RunningTask:
    """An attempt in progress: what shutdown, cancellation and time limits need to stop and settle it."""

    record: TaskRecord
    message: Message
    context: TaskContext
    must_complete: bool
    thread_id: int
    #: `time.monotonic()` at which the attempt exceeds its `timeout`, if it has one.
    deadline: float | None = None
    #: Why the attempt is being stopped: "cancelled" or "timeout" (None: it is not).
    stop_reason: str | None = None
    stop_requested_at: float = 0.0
    forced: bool = False
    #: True only while the task's own code runs; a forced stop may land only then (guarded by `lock`).
    in_user_code: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: For an `async def` task: its coroutine's future on the worker's event loop (cancel it to stop it).
    async_future: Future[Any] | None = None
    #: How the attempt ended, once judged (see `judge`); judged once, whichever thread asks first.
    verdict: ExecutionOutcome | None = None

    @property
    def task_id(self) -> str:
        return self.record.id

    def ask_to_stop(self, reason: str) -> None:
        """Make `should_stop()` true, remembering why (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_requested_at = time.monotonic()
        self.context.request_stop()

    def failure_of(self, exc: BaseException) -> BaseException:
        """What the attempt failed with: a cancellation that a forced stop caused is `TaskInterrupted`."""
        if isinstance(exc, (CancelledError, asyncio.CancelledError)) and self.forced:
            return TaskInterrupted()
        return exc

    def judge(self, task: Task[Any, Any], value: Any, failure: BaseException | None) -> ExecutionOutcome:
        """How the attempt ended (the task returned `value` or raised `failure`): success, retry, failure...

        Judged once (a retry delay may be random): for an `async def` task both the event loop, where its
        middleware runs, and the pool thread, which writes the outcome, ask.
        """
        with self.lock:
            if self.verdict is None:
                failure = None if failure is None else self.failure_of(failure)
                self.verdict = _judge(self, task, value, failure)
            return self.verdict


def leave_user_code(run: RunningTask) -> None:
    """Mark the task's code as left and withdraw any forced stop not yet delivered to this thread.

    A forced stop raised after this point would land in the executor's own bookkeeping; the supervisor
    sends one only while `in_user_code` is true, under the same lock.
    """
    with run.lock:
        run.in_user_code = False
        if run.forced:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(run.thread_id), None)


def _judge(
    run: RunningTask, task: Task[Any, Any], value: Any, failure: BaseException | None
) -> ExecutionOutcome:
    if run.stop_reason == Reason.CANCELLED:
        return ExecutionOutcome(TaskStatus.CANCELLED, exception=failure, reason=Reason.CANCELLED)
    if run.stop_reason == Reason.TIMEOUT:
        failure = TimeLimitExceeded(
            f"attempt {run.record.attempt} ran past its time limit of {task.options.timeout} s"
            + (" and was stopped by force" if run.forced else "")
        )
    if failure is not None:
        return failure_outcome(task.options.retry_policy, run.record.attempt, failure)
    try:
        result = encode_json_value(value, "the return value")
    except ArgumentEncodingError as exc:
        return ExecutionOutcome(TaskStatus.FAILED, exception=exc, reason=Reason.RESULT_NOT_SERIALIZABLE)
    return ExecutionOutcome(TaskStatus.SUCCESS, result=result)
