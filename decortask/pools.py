"""Execution pools behind one small interface; the worker hands them callables and gets futures back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Pool(Protocol):
    """Runs callables concurrently; `size` is how many at once."""

    size: int

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class ThreadPool:
    """The default pool: `size` threads in this process."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="decortask-task")

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


def make_pool(kind: str, size: int) -> Pool:
    """The pool named on the command line (`--pool`)."""
    if kind == "threads":
        return ThreadPool(size)
    from .errors import ConfigurationError

    raise ConfigurationError(f"unknown pool {kind!r}; available: threads")
