"""Execution pools behind one small interface (`Pool`): the worker hands them deliveries, gets Outcomes back.

Two pools implement it: `ThreadPool` (the default, `--pool threads`: threads in the worker's process) and
`procpool.ProcessPool` (`--pool processes`: spawned children). Each runs `delivery.process_delivery`, so
decoding, the receipt rules and the executor are the same in both; `async def` tasks run on one event loop
per process (`aioloop.py`) whichever pool runs them, so there is no separate asyncio pool. The worker never
asks which pool it has: it submits, watches running attempts through `running()`/`stop_by_force()` (the
supervisor), writes heartbeats for `owners()`, and at shutdown calls `request_stop_all()`, then
`interrupt_running()` past the grace, then `shutdown()`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import recovery
from .attempts import RunningTask
from .delivery import process_delivery
from .errors import ConfigurationError
from .handoff import Job
from .outcomes import Outcome, Reason, Settle
from .procpool import ProcessPool
from .supervision import RunningAttempts, Supervised, force_stop

if TYPE_CHECKING:
    from .app import Decortask
    from .executor import Executor
    from .transport import Delivery

#: What `decortask worker --pool` accepts.
POOL_KINDS = ("threads", "processes")


class OutcomeFuture(Protocol):
    """What `Pool.submit` returns: a `concurrent.futures.Future` of the Outcome, or the thread pool's
    lighter `handoff.Job`."""

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """Call `fn(self)` once the outcome is in."""
        ...

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> Outcome:
        """The Outcome, or the error processing the delivery raised (then leave the message to the broker)."""
        ...


class Pool(RunningAttempts, Protocol):
    """Runs deliveries, `size` at once; what the worker needs of any pool.

    From `RunningAttempts`: `running()`, the attempts running now, and `stop_by_force(run)`.
    """

    size: int

    def start(self) -> None:
        """Get ready to run deliveries (threads started, children spawned and importing the tasks)."""
        ...

    def submit(self, delivery: Delivery) -> OutcomeFuture:
        """Run `delivery`; the future holds its Outcome (an exception: leave the message to the broker)."""
        ...

    def owners(self) -> list[str]:
        """Owner ids besides the worker's own under which attempts run (live children): heartbeats due."""
        ...

    def request_stop_all(self) -> None:
        """Shutdown began: running attempts see `should_stop()` true; unstarted ones go back (REQUEUE)."""
        ...

    def interrupt_running(self) -> None:
        """Shutdown past the grace: settle running attempts (but `must_complete` ones) as interrupted.

        Each one's future then holds that Outcome (ACK), which the worker settles like any other.
        """
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Release the pool at the worker's end; with `wait` False (a failed start), at once."""
        ...


class ThreadPool:
    """The default pool: `size` daemon threads in this process, each running one delivery at a time.

    Daemon threads, unlike `concurrent.futures.ThreadPoolExecutor`'s, let the worker exit after shutdown
    has interrupted a task whose code will not return: its state is already settled in the store.

    Args:
        app: the worker's app.
        executor: the worker's executor; its `running` attempts are this pool's.
        size: how many threads.
    """

    def __init__(self, app: Decortask, executor: Executor, size: int) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.app = app
        self.executor = executor
        self.size = size
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: The job each busy thread runs, by thread id: shutdown finds a running attempt's job through it.
        self._busy: dict[int, Job] = {}

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._loop, name=f"decortask-task-{n}", daemon=True)
            for n in range(self.size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, delivery: Delivery) -> Job:
        job = Job(delivery)
        self._jobs.put(job)
        return job

    def running(self) -> Sequence[Supervised]:
        return list(self.executor.running.values())

    def stop_by_force(self, run: Supervised) -> bool:
        return isinstance(run, RunningTask) and force_stop(run)

    def owners(self) -> list[str]:
        return []  # every attempt runs under the worker's own id

    def request_stop_all(self) -> None:
        self.executor.request_stop_all()

    def interrupt_running(self) -> None:
        for run in list(self.executor.running.values()):
            job = self._busy.get(run.thread_id)
            if run.must_complete or job is None or job.done():
                continue
            run.context.request_stop()
            status = recovery.interrupt(self.app, run.record, run.message, Reason.SHUTDOWN)
            if status is None:
                continue  # it finished at this very moment: its own outcome settles the message
            # The thread may still be in the task's code; whatever it returns later is discarded.
            job.resolve(Outcome(Settle.ACK, status, Reason.SHUTDOWN, ran=True))

    def shutdown(self, wait: bool = True) -> None:
        """Tell the threads to exit once their current job ends.

        They are never joined, `wait` or not: a thread still in an interrupted task's code would hold the
        worker's exit, and that attempt is settled already.
        """
        for _ in self._threads:
            self._jobs.put(None)

    def _loop(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._busy[ident] = job
            try:
                outcome = process_delivery(self.app, self.executor, job.delivery)
            except BaseException as exc:
                job.resolve(error=exc)
            else:
                job.resolve(outcome)  # unless shutdown settled it first: then this outcome is discarded
            finally:
                self._busy.pop(ident, None)


def make_pool(
    kind: str, app: Decortask, executor: Executor, worker_id: str, size: int, modules: Sequence[str] = ()
) -> Pool:
    """The pool named on the command line (`--pool`), not yet started.

    Args:
        kind: one of `POOL_KINDS`.
        app: the worker's app.
        executor: the worker's executor.
        worker_id: the worker's id (process-pool children own attempts under `<worker_id>/<pid>`).
        size: how many tasks at once.
        modules: what a process-pool child imports to register the tasks (default: the modules that
            define the registered tasks).

    Raises:
        ConfigurationError: an unknown pool, or a store the process pool's children cannot share.
    """
    if kind == "threads":
        return ThreadPool(app, executor, size)
    if kind == "processes":
        return ProcessPool(app, executor, worker_id, modules, size)
    raise ConfigurationError(f"unknown pool {kind!r}; available: {', '.join(POOL_KINDS)}")
