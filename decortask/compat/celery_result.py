"""`AsyncResult`: Celery's result handle over a decortask `TaskHandle`, with Celery's state names."""

from __future__ import annotations

from typing import Any

from ..app import Decortask, current_app
from ..errors import TaskFailed
from ..handle import TaskHandle
from ..states import TaskStatus

#: decortask's states under Celery's names. SCHEDULED (a countdown or eta not reached yet) is PENDING in
#: Celery too; INTERRUPTED (the worker died while running it, docs/reliability.md) has no Celery name and
#: is a failure there as well.
CELERY_STATES: dict[TaskStatus, str] = {
    TaskStatus.PENDING: "PENDING",
    TaskStatus.SCHEDULED: "PENDING",
    TaskStatus.RUNNING: "STARTED",
    TaskStatus.RETRYING: "RETRY",
    TaskStatus.SUCCESS: "SUCCESS",
    TaskStatus.FAILED: "FAILURE",
    TaskStatus.CANCELLED: "REVOKED",
    TaskStatus.INTERRUPTED: "FAILURE",
}


class AsyncResult:
    """A task's result as Celery's `AsyncResult` reads it: `.id`, `.state`, `.ready()`, `.get(timeout=)`.

    `AsyncResult(task_id)` looks a task up by id on the current app (or `app=`); `.delay()` and
    `.apply_async()` of a `decortask.compat.celery` task return one. `.handle` is the decortask
    `TaskHandle` underneath, for everything Celery has no word for (progress, logs, `decortask_status`).
    """

    def __init__(
        self, id: str, app: Decortask | None = None, *, handle: TaskHandle[Any] | None = None
    ) -> None:
        self.id = id
        self._app = app
        self._handle = handle

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def handle(self) -> TaskHandle[Any]:
        """The decortask handle; raises `TaskNotFound` for an id the store has no record of."""
        if self._handle is None:
            self._handle = (self._app or current_app()).handle(self.id)
        return self._handle

    @property
    def decortask_status(self) -> TaskStatus:
        """The task's own decortask state (`SCHEDULED`, `INTERRUPTED`... which Celery's names merge)."""
        return self.handle.status

    @property
    def state(self) -> str:
        """Celery's name for the state: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return CELERY_STATES[self.decortask_status]

    @property
    def status(self) -> str:
        """The same as `state`, as in Celery."""
        return self.state

    def ready(self) -> bool:
        """True once the task has ended (SUCCESS, FAILURE or REVOKED)."""
        return self.decortask_status.terminal

    def successful(self) -> bool:
        return self.decortask_status is TaskStatus.SUCCESS

    def failed(self) -> bool:
        return self.state == "FAILURE"

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """Wait for the task to end and return its value.

        Args:
            timeout: seconds to wait; `WaitTimeout` (a `TimeoutError`) after it.
            propagate: raise `TaskFailed`/`TaskCancelled` when the task did not succeed (the remote error as
                strings: `error_type`, `error_message`, `remote_traceback`; never the original exception
                class); with False, return that error instead.
            interval: Celery's polling interval; unused, as the store wakes the waiter when the outcome is
                written.
        """
        del interval
        outcome = self.handle.wait(timeout)
        if outcome.ok:
            return outcome.value
        if propagate:
            return self.handle.value()  # raises the TaskFailed / TaskCancelled of this outcome
        return self.handle.exception()

    def wait(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """An old Celery name for `get()`."""
        return self.get(timeout=timeout, propagate=propagate, interval=interval)

    @property
    def result(self) -> Any:
        """The return value once SUCCESS, the `TaskFailed`/`TaskCancelled` once it failed, else None."""
        if not self.ready():
            return None
        error = self.handle.exception()
        return self.handle.value() if error is None else error

    @property
    def info(self) -> Any:
        """The same as `result`, as in Celery."""
        return self.result

    @property
    def traceback(self) -> str | None:
        """The remote traceback of a failed task, as text."""
        if not self.ready():
            return None
        error = self.handle.exception()
        return error.remote_traceback if isinstance(error, TaskFailed) else None

    def revoke(self, terminate: bool = False) -> bool:
        """Cancel the task (`TaskHandle.cancel`): one that has not started never runs; a running one is
        asked to stop (`ctx.should_stop()`) and is stopped by force after `cancel_grace`, so `terminate`
        changes nothing. False if it had already ended."""
        del terminate
        return self.handle.cancel()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        if isinstance(other, str):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"


__all__ = ["CELERY_STATES", "AsyncResult"]
