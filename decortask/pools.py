"""Execution pools behind one small interface; the worker hands them callables and gets futures back.

The process pool (`--pool processes`) lives in `procpool.py`: it runs deliveries, not callables, in
spawned children, and the worker builds it itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: What `decortask worker --pool` accepts.
POOL_KINDS = ("threads", "processes")


class Pool(Protocol):
    """Runs callables concurrently; `size` is how many at once."""

    size: int

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class ThreadPool:
    """The default pool: `size` daemon threads in this process.

    Daemon threads, unlike `concurrent.futures.ThreadPoolExecutor`'s, let the worker exit after shutdown
    has interrupted a task whose code will not return: its state is already settled in the store.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._loop, name=f"decortask-task-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once their current job ends; with `wait`, block until they have."""
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def make_pool(kind: str, size: int) -> Pool:
    """The in-process pool named on the command line (`--pool`); `processes` is `procpool.ProcessPool`."""
    if kind == "threads":
        return ThreadPool(size)
    from .errors import ConfigurationError

    raise ConfigurationError(f"unknown pool {kind!r}; available: {', '.join(POOL_KINDS)}")
