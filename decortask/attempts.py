"""A running attempt's bookkeeping, shared by the executor, the supervisor and the process pool."""

from __future__ import annotations

import ctypes
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .context import TaskContext
from .message import Message
from .store.base import TaskRecord


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

    @property
    def task_id(self) -> str:
        return self.record.id

    def ask_to_stop(self, reason: str) -> None:
        """Make `should_stop()` true, remembering why (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_requested_at = time.monotonic()
        self.context.request_stop()


def leave_user_code(run: RunningTask) -> None:
    """Mark the task's code as left and withdraw any forced stop not yet delivered to this thread.

    A forced stop raised after this point would land in the executor's own bookkeeping; the supervisor
    sends one only while `in_user_code` is true, under the same lock.
    """
    with run.lock:
        run.in_user_code = False
        if run.forced:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(run.thread_id), None)
