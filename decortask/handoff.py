"""How a finished delivery travels from a pool thread back to the worker's consumer thread, cheaply.

Every task crosses this twice (submitted, then its outcome back), so it allocates as little as it can:
`concurrent.futures.Future` builds a condition variable per task and `queue.Queue` a lock per wait, which
together cost a draining worker about as much Python time as its ack. `Job` is the thread pool's future
(one pool-wide lock settles the race between a task's own end and shutdown's interruption); `OutcomeInbox`
is the worker's queue of outcomes.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .outcomes import Outcome
    from .transport import Delivery

T = TypeVar("T")
#: Settles every `Job`: uncontended but for the moment shutdown interrupts a task that is just ending.
_RESOLVING = threading.Lock()


class Job:
    """One delivery handed to a pool thread, and the future of its Outcome (the subset of
    `concurrent.futures.Future` the worker uses: `add_done_callback`, `done`, `result`)."""

    __slots__ = ("_callback", "_done", "_error", "_outcome", "_waiter", "delivery")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self._done = False
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._callback: Callable[[Job], object] | None = None
        #: Made only for a caller that waits in `result` before the outcome is in (tests, mostly).
        self._waiter: threading.Lock | None = None

    def add_done_callback(self, callback: Callable[[Job], object]) -> None:
        """Call `callback(self)` once the outcome is in (at once, on this thread, if it is already)."""
        with _RESOLVING:
            if not self._done:
                self._callback = callback
                return
        callback(self)

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Outcome:
        """The outcome, waiting up to `timeout` seconds (None: for ever) for it; raises the error the
        delivery's processing raised, or TimeoutError."""
        if not self._done:
            with _RESOLVING:
                waiter = self._waiter
                if waiter is None and not self._done:
                    waiter = self._waiter = threading.Lock()
                    waiter.acquire()
            if waiter is not None and waiter.acquire(timeout=-1 if timeout is None else timeout):
                waiter.release()  # for any other caller waiting on it
            if not self._done:
                raise TimeoutError(f"no outcome within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._outcome is not None, "result() before the job is done"
        return self._outcome

    def resolve(self, outcome: Outcome | None = None, error: BaseException | None = None) -> bool:
        """Set the outcome (or the error) unless it is set already: True if this call set it."""
        with _RESOLVING:
            if self._done:
                return False
            self._done = True
            self._outcome, self._error = outcome, error
            callback, waiter = self._callback, self._waiter
        if waiter is not None:
            waiter.release()
        if callback is not None:
            callback(self)
        return True


class OutcomeInbox(Generic[T]):
    """A many-producer, one-consumer queue whose timed `get` survives signals.

    On CPython 3.10-3.12 a `SimpleQueue.get(timeout=...)` interrupted by a signal whose handler ends past
    the deadline waits for the next put instead of raising Empty; SIGTERM is handled on the consumer thread,
    mostly inside these waits (issue 10, item 9). A plain lock's timed acquire handles signals correctly, so
    the consumer waits on one, released by the put that finds it waiting.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Lock()
        self._wake.acquire()  # held while nobody has put anything for a waiting consumer
        self._waiting = False

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._waiting:
                self._waiting = False
                self._wake.release()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """The oldest item; waits up to `timeout` seconds with `block` (None: for ever).

        Raises:
            queue.Empty: nothing came in time.
        """
        with self._lock:
            if self._items:
                return self._items.popleft()
            if not block:
                raise queue.Empty
            self._waiting = True
        woken = self._wake.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        with self._lock:
            if self._waiting:  # timed out, and no put came since
                self._waiting = False
            elif not woken:  # a put released the lock just after the timeout: take it back
                self._wake.acquire()
            if self._items:
                return self._items.popleft()
        raise queue.Empty

    def qsize(self) -> int:
        return len(self._items)
