"""Watches running attempts from the worker loop: time limits and cancellation requests.

A task is first asked to stop (`ctx.should_stop()` turns true); past its grace period it is stopped by
force. The supervisor sees running attempts through the worker's pool (`pools.Pool`), which also does the
forced stop: on the thread pool, `force_stop` raises `TaskInterrupted` in the task's thread, which Python
delivers at the next bytecode the thread runs (code blocked inside one long C call, a single long
`time.sleep` or a socket read, is stopped when that call returns); on the process pool the parent asks the
child over its pipe, and the forced step terminates the child (`procpool.ProcessPool.stop_by_force`).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .errors import TaskInterrupted
from .security import mask_text

if TYPE_CHECKING:
    from .app import Decortask
    from .attempts import RunningTask

logger = logging.getLogger("decortask.worker")


class Supervised(Protocol):
    """What the supervisor needs of a running attempt, local (`RunningTask`) or in a pool child."""

    deadline: float | None
    stop_reason: str | None
    stop_requested_at: float
    forced: bool

    @property
    def task_id(self) -> str: ...

    def ask_to_stop(self, reason: str) -> None: ...


class RunningAttempts(Protocol):
    """Where the supervisor finds the running attempts, and who stops one by force: the worker's pool."""

    def running(self) -> Sequence[Supervised]:
        """The attempts running now."""
        ...

    def stop_by_force(self, run: Supervised) -> bool:
        """Stop `run` by force if it still runs; True if a stop was sent."""
        ...


class Supervisor:
    """One worker's watch over its running attempts; `tick()` is called from the worker loop.

    Args:
        app: the worker's app (settings, store).
        attempts: the worker's pool, whose running attempts it watches.
    """

    def __init__(self, app: Decortask, attempts: RunningAttempts) -> None:
        self.app = app
        self.attempts = attempts
        self._next_cancel_poll = 0.0
        #: Task ids a control-exchange broadcast named since the last tick (consumer thread only).
        self._cancel_hints: set[str] = set()

    def hint_cancel(self, task_id: str) -> None:
        """A broadcast said `task_id` was asked to cancel: check it at the next tick, not the next poll."""
        self._cancel_hints.add(task_id)

    def tick(self) -> None:
        now = time.monotonic()
        running = self.attempts.running()
        hinted, self._cancel_hints = self._cancel_hints, set()
        if not running:
            return
        poll_cancel = now >= self._next_cancel_poll
        if poll_cancel:
            self._next_cancel_poll = now + self.app.settings.cancel_poll_interval
        for run in running:
            if run.deadline is not None and now >= run.deadline:
                if run.stop_reason is None:
                    logger.warning("task %s reached its time limit; asking it to stop", run.task_id)
                run.ask_to_stop("timeout")
            # A broadcast is only a hint: the store, where the request was written first, decides.
            check_cancel = poll_cancel or run.task_id in hinted
            if check_cancel and run.stop_reason != "cancelled" and self._cancel_requested(run):
                logger.info("task %s: cancellation requested; asking it to stop", run.task_id)
                run.ask_to_stop("cancelled")
            if run.stop_reason is not None and not run.forced:
                grace = (
                    self.app.settings.cancel_grace
                    if run.stop_reason == "cancelled"
                    else self.app.settings.timeout_grace
                )
                if now - run.stop_requested_at >= grace:
                    self.attempts.stop_by_force(run)

    def _cancel_requested(self, run: Supervised) -> bool:
        try:
            record = self.app.store.get(run.task_id)
        except Exception as exc:
            logger.warning("could not check task %s for cancellation (%s)", run.task_id, mask_text(str(exc)))
            return False
        return record is not None and record.cancel_requested_at is not None


def force_stop(run: RunningTask) -> bool:
    """Stop the attempt by force if its own code still runs; True if a stop was sent.

    An `async def` task's coroutine is cancelled on the event loop; a sync task gets `TaskInterrupted`
    raised in its thread.
    """
    with run.lock:
        if not run.in_user_code or run.forced:
            return False
        if run.async_future is not None:
            run.forced = run.async_future.cancel()
            return run.forced
        sent = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(run.thread_id), ctypes.py_object(TaskInterrupted)
        )
        run.forced = sent == 1
    if run.forced:
        logger.warning("task %s did not stop within its grace period; stopping it by force", run.task_id)
    return run.forced
