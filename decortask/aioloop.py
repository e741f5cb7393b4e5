"""One event loop per worker for `async def` tasks, so a worker can mix sync and async tasks.

Whichever pool runs the task (there is no separate asyncio pool), the thread that picked it up submits its
coroutine to this loop and waits for it; many coroutines share the loop while they await. Each executor
owns one, so a process-pool child has its own. Cancelling the returned future cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from .context import TaskContext, activate, deactivate


class EventLoopThread:
    """A daemon thread running an asyncio loop, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="decortask-asyncio", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, ctx: TaskContext, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run `coroutine` on the loop with `ctx` as its task context; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(_in_context(ctx, coroutine), self._running_loop())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and close it once its thread has returned.

        A coroutine still running (a task stuck past the shutdown grace) keeps the thread for at most
        `timeout` seconds; the loop is then left to the daemon thread rather than closed under it.
        """
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return
        loop.close()


async def _in_context(ctx: TaskContext, coroutine: Coroutine[Any, Any, Any]) -> Any:
    # The loop thread has its own contextvars; the task's context must be current inside the coroutine.
    token = activate(ctx)
    try:
        return await coroutine
    finally:
        deactivate(token)
