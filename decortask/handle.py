"""TaskHandle: a task's id plus a view of its record in the store."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import TaskCancelled, TaskFailed, TaskNotDone, TaskNotFound, WaitTimeout
from .states import TaskStatus
from .store.base import LogLine, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask

R = TypeVar("R")


@dataclass(frozen=True)
class TaskResult:
    """A terminal snapshot: what `wait()` and `result()` return."""

    task_id: str
    status: TaskStatus
    value: Any
    reason: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.SUCCESS


class TaskHandle(Generic[R]):
    """Returned by `.delay()` / `.apply_async()`; every property reads the store afresh."""

    def __init__(self, app: Decortask, task_id: str, name: str) -> None:
        self.app = app
        self.id = task_id
        self.name = name

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    def record(self) -> TaskRecord:
        """The full record from the store."""
        record = self.app.store.get(self.id)
        if record is None:
            raise self._not_found()
        return record

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(
            f"task {self.id} has no record in the store {self.app.store_url_masked} "
            "(wrong store URL, or the record expired after its result_ttl/history_ttl)"
        )

    @property
    def status(self) -> TaskStatus:
        return self.record().status

    @property
    def attempts(self) -> int:
        """Attempts started so far."""
        return self.record().attempt

    @property
    def progress(self) -> float | None:
        return self.record().progress

    @property
    def output(self) -> Any:
        """What the task last published with `ctx.set_output({...})` (None before it does); not its result."""
        return self.record().output

    @property
    def logs(self) -> list[LogLine]:
        return self.record().logs

    def cancel(self) -> bool:
        """Cancel the task: if it has not started it never will; if it runs, it is asked to stop.

        Returns False if the task had already ended. See `decortask.control.request_cancel`.
        """
        from .control import request_cancel

        return request_cancel(self.app, self.id)

    async def acancel(self) -> bool:
        """Async `cancel()`."""
        return await asyncio.to_thread(self.cancel)

    # Async reads: the store client blocks, so each runs in the loop's default executor.

    async def arecord(self) -> TaskRecord:
        """Async `record()`."""
        return await asyncio.to_thread(self.record)

    async def astatus(self) -> TaskStatus:
        """Async `status`."""
        return (await self.arecord()).status

    async def aprogress(self) -> float | None:
        """Async `progress`."""
        return (await self.arecord()).progress

    async def alogs(self) -> list[LogLine]:
        """Async `logs`."""
        return (await self.arecord()).logs

    async def adone(self) -> bool:
        """Async `done()`."""
        return (await self.arecord()).status.terminal

    async def aresult(self) -> TaskResult:
        """Async `result()`: the terminal snapshot now; raises `TaskNotDone` while the task has not finished."""
        return await asyncio.to_thread(self.result)

    def done(self) -> bool:
        """True once the task reached a terminal state."""
        return self.record().status.terminal

    def cancelled(self) -> bool:
        return self.record().status is TaskStatus.CANCELLED

    def result(self) -> TaskResult:
        """The terminal snapshot now; raises `TaskNotDone` while the task has not finished."""
        record = self.record()
        if not record.status.terminal:
            raise TaskNotDone(
                f"task {self.id} is {record.status}; use wait() or get() to block until it ends"
            )
        return _snapshot(record)

    def value(self) -> R:
        """The return value now; raises `TaskFailed`/`TaskCancelled` for those outcomes, `TaskNotDone` before."""
        value: R = _value_of(self.result())
        return value

    def exception(self) -> TaskFailed | TaskCancelled | None:
        """The error the task ended with, or None on success; raises `TaskNotDone` before it ends."""
        snapshot = self.result()
        if snapshot.ok:
            return None
        return _error_of(snapshot)

    def wait(self, timeout: float | None = None) -> TaskResult:
        """Block until the task ends; raises `WaitTimeout` after `timeout` seconds.

        The store wakes the caller when the outcome is written (`TaskStore.wait_for_outcome`: Redis
        pub/sub, a SQLite watcher thread, the memory store's own notice), rather than being polled.
        """
        return self._finished(self.app.store.wait_for_outcome(self.id, timeout), timeout)

    def get(self, timeout: float | None = None) -> R:
        """Block until the task ends and return its value (Celery-style); raises on failure."""
        value: R = _value_of(self.wait(timeout))
        return value

    async def await_result(self, timeout: float | None = None) -> TaskResult:
        """Async `wait()`: suspends the coroutine until the outcome is written, never the event loop."""
        return self._finished(await self.app.store.await_outcome(self.id, timeout), timeout)

    def _finished(self, record: TaskRecord | None, timeout: float | None) -> TaskResult:
        """The snapshot of what a wait returned; `TaskNotFound` or `WaitTimeout` when it ended otherwise."""
        if record is None:
            raise self._not_found()
        if not record.status.terminal:
            raise WaitTimeout(
                f"task {self.id} still {record.status} after {timeout} s; is a worker consuming "
                f"queue {record.queue!r}?"
            )
        return _snapshot(record)

    async def aget(self, timeout: float | None = None) -> R:
        """Async `get()`."""
        value: R = _value_of(await self.await_result(timeout))
        return value

    def __await__(self) -> Generator[Any, None, R]:
        return self.aget().__await__()


def _snapshot(record: TaskRecord) -> TaskResult:
    return TaskResult(
        task_id=record.id,
        status=record.status,
        value=record.result,
        reason=record.reason,
        error_type=record.error_type,
        error_message=record.error_message,
        traceback=record.traceback,
        attempts=record.attempt,
    )


def _error_of(snapshot: TaskResult) -> TaskFailed | TaskCancelled:
    if snapshot.status is TaskStatus.CANCELLED:
        why = f" ({snapshot.reason})" if snapshot.reason else ""
        return TaskCancelled(f"task {snapshot.task_id} was cancelled{why}")
    return TaskFailed(
        snapshot.task_id,
        snapshot.status.value,
        snapshot.reason,
        snapshot.error_type,
        snapshot.error_message,
        snapshot.traceback,
    )


def _value_of(snapshot: TaskResult) -> Any:  # the caller's R: the task's return type
    if snapshot.ok:
        return snapshot.value
    raise _error_of(snapshot)
