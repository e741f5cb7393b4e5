"""Waiting for tasks to end, in one process: waiters keyed by task id, woken when a backend learns of an outcome.

A backend that learns of outcomes (the memory store as it writes them, Redis by pub/sub in `redis_wait.py`,
SQLite by a watcher thread in `sqlite_wait.py`) owns one `OutcomeNotices`. Its `wait` registers the caller
first, then makes sure notices flow (`ready`: subscribe, start the watcher), then reads the record, and only
then blocks until notified: an outcome written at any moment after the registration wakes the caller, and
one written before it is in the record read. Every `recheck` seconds a waiter reads the record again anyway,
in case a notice was lost (a dropped connection); `notified` and `rechecked` count how waiters woke.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from .base import TaskRecord

#: Seconds between re-reads of a record while waiting for a notice: the bound on a lost notice's delay.
RECHECK = 1.0

#: A store's `get`.
Read = Callable[[str], TaskRecord | None]
#: What makes notices flow before a wait's first read, given the seconds the wait has left (None: no limit).
Ready = Callable[[float | None], None]


class Waiter:
    """One caller's wait for one task: a threading event, and an asyncio one for a caller on an event loop."""

    __slots__ = ("_async_event", "_event", "_loop", "task_id")

    def __init__(self, task_id: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.task_id = task_id
        self._event = threading.Event()
        self._loop = loop
        self._async_event = asyncio.Event() if loop is not None else None

    def notify(self) -> None:
        """Wake the caller; any thread may call it."""
        self._event.set()
        if self._loop is not None and self._async_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: no one is left to wake
                self._loop.call_soon_threadsafe(self._async_event.set)

    def block(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a notice; True if one came (it is consumed)."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    async def ablock(self, timeout: float) -> bool:
        """`block` for a coroutine: suspends it, never the event loop."""
        assert self._async_event is not None, "an async wait needs a waiter made with its loop"
        try:
            await asyncio.wait_for(self._async_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._async_event.clear()
            self._event.clear()
        return True


class OutcomeNotices:
    """The tasks this process waits for, and the waits themselves (sync and async).

    Args:
        recheck: seconds between re-reads while no notice comes.
    """

    def __init__(self, *, recheck: float = RECHECK) -> None:
        self.recheck = recheck
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)  # a watcher sleeps on it while nobody waits
        self._waiters: dict[str, list[Waiter]] = {}
        self._idle_since = time.monotonic()
        #: How many times a waiter woke on a notice, and on its recheck timer (tests check the mechanism).
        self.notified = 0
        self.rechecked = 0

    # -- registry ------------------------------------------------------------------------------------------

    def add(self, task_id: str, loop: asyncio.AbstractEventLoop | None = None) -> Waiter:
        waiter = Waiter(task_id, loop)
        with self._lock:
            self._waiters.setdefault(task_id, []).append(waiter)
            self._added.notify_all()
        return waiter

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.task_id, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(waiter.task_id, None)
            if not self._waiters:
                self._idle_since = time.monotonic()

    def notify(self, task_id: str) -> None:
        """Wake every caller waiting for `task_id` (its record became terminal, or was deleted)."""
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for waiter in waiters:
            waiter.notify()

    def notify_all(self) -> None:
        """Wake every caller, to read its record again (notices may have been lost)."""
        with self._lock:
            waiters = [waiter for group in self._waiters.values() for waiter in group]
        for waiter in waiters:
            waiter.notify()

    def waiting(self) -> list[str]:
        """The task ids someone waits for now."""
        with self._lock:
            return list(self._waiters)

    def sleep_until_awaited(self, timeout: float) -> bool:
        """Block until someone waits (True) or `timeout` passes (False): a watcher with nothing to do."""
        with self._added:
            return self._added.wait_for(lambda: bool(self._waiters), timeout)

    def idle_for(self) -> float:
        """Seconds since the last waiter left; 0.0 while someone waits."""
        with self._lock:
            return 0.0 if self._waiters else time.monotonic() - self._idle_since

    # -- waits ---------------------------------------------------------------------------------------------

    def wait(
        self, task_id: str, timeout: float | None, read: Read, ready: Ready | None = None
    ) -> TaskRecord | None:
        """The record once terminal; as it is at the deadline after `timeout` s; None for an unknown task.

        `read` is the store's `get`. `ready` runs after the registration and before the first read (the
        backend's subscribe), given the seconds left (None: no deadline).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self.add(task_id)
        try:
            if ready is not None:
                ready(_left(deadline))
            while True:
                record = read(task_id)
                span = self._span(record, deadline)
                if span is None:
                    return record
                self._count(waiter.block(span), deadline)
        finally:
            self.remove(waiter)

    async def await_outcome(
        self, task_id: str, timeout: float | None, read: Read, ready: Ready | None = None
    ) -> TaskRecord | None:
        """`wait` for a coroutine: reads run in the loop's default executor, the wait suspends only it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self.add(task_id, asyncio.get_running_loop())
        try:
            if ready is not None:
                await asyncio.to_thread(ready, _left(deadline))
            while True:
                record = await asyncio.to_thread(read, task_id)
                span = self._span(record, deadline)
                if span is None:
                    return record
                self._count(await waiter.ablock(span), deadline)
        finally:
            self.remove(waiter)

    def _span(self, record: TaskRecord | None, deadline: float | None) -> float | None:
        """How long to block before reading again; None when the wait is over."""
        if record is None or record.status.terminal:
            return None
        if deadline is None:
            return self.recheck
        left = deadline - time.monotonic()
        return min(self.recheck, left) if left > 0 else None

    def _count(self, woken: bool, deadline: float | None) -> None:
        with self._lock:
            if woken:
                self.notified += 1
            elif deadline is None or time.monotonic() < deadline:
                self.rechecked += 1


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
