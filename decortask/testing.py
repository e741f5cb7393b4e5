"""Test helpers that run tasks through the real path: synchronously, eagerly, or on a worker thread.

- `run_pending()` drains queues in the calling thread through decode -> execute -> settle.
- `eager()` makes `.delay()` run the task before it returns, through the same path.
- `WorkerThread` runs a real `Worker` in a background thread of the test process.
- `isolated_app()` gives a test its own app, made current for the test.

Nothing here imports pytest: the pytest plugin (`decortask.contrib.pytest_plugin`) wraps these helpers in
fixtures, and unittest suites or scripts use them directly. See docs/testing.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from . import app as app_module
from . import capture
from .app import Decortask, current_app, reset_default_app
from .errors import BrokerUnavailable, DecortaskError, WaitTimeout
from .handle import TaskHandle, TaskResult
from .security import mask_text
from .states import TaskStatus
from .transport import scheme_of
from .worker import Worker

logger = logging.getLogger("decortask.testing")

MEMORY_URL = "memory://"
#: How often `WorkerThread.wait` reads the store.
POLL_INTERVAL = 0.02


def run_pending(
    app: Decortask | None = None,
    queues: Iterable[str] | None = None,
    *,
    max_tasks: int | None = None,
    now: float | None = None,
) -> int:
    """Run every message ready now (and every scheduled entry due by `now`) until the queues are empty.

    Args:
        app: the app (default: the current app).
        queues: queues to drain (default: the app's default queue).
        max_tasks: stop after this many messages.
        now: treat this UNIX time as "now" for the schedule (lets a test skip a retry delay or countdown).

    Returns:
        How many messages were processed.
    """
    app = app or current_app()
    worker = Worker(app, queues, concurrency=1, worker_id="run_pending")
    if now is not None:
        # The executor's eta and expiry checks see the same "now" as the schedule.
        frozen = now
        worker.executor.clock = lambda: max(time.time(), frozen)
    session = app.transport.open_consumer(worker.queues, prefetch=1, consume=False)
    processed = 0
    try:
        while max_tasks is None or processed < max_tasks:
            worker.scheduler.tick(now if now is not None else time.time())
            delivery = None
            for name in worker.queues:
                delivery = session.get(name)
                if delivery is not None:
                    break
            if delivery is None:
                return processed
            worker.settle(session, delivery, worker.process(delivery))
            processed += 1
        return processed
    finally:
        session.close()
        worker.executor.event_loop.close()  # started only if an `async def` task ran
        capture.disable_for(worker.id)  # the worker's output capture (capture.py) ends with the run


# -- eager mode --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eager(app: Decortask | None = None, *, propagate: bool = False) -> Iterator[Decortask]:
    """Run each task sent through `app` to its final state before `.delay()` / `.apply_async()` return.

    The task takes the real path: its arguments are encoded to JSON (a value JSON cannot carry raises
    `ArgumentEncodingError` from `.delay()`, as in production), the message goes through the app's broker,
    and it is decoded, executed and settled in the calling thread as a worker would. Retries and countdowns
    run at once, with the clock moved to when they are due, so the returned handle shows the final state.

    Args:
        app: the app (default: the current app).
        propagate: raise the task's `TaskFailed` / `TaskCancelled` from `.delay()` instead of returning
            a handle in that state.

    Yields:
        The app, in eager mode until the block ends.
    """
    app = app or current_app()
    previous = app.eager_runner
    app.eager_runner = lambda handle: run_eagerly(handle, propagate=propagate)
    try:
        yield app
    finally:
        app.eager_runner = previous


def run_eagerly(handle: TaskHandle[Any], *, propagate: bool = False) -> None:
    """Run a sent task now, in this thread, until it reaches a final state (what `eager()` does per call).

    Raises:
        TaskFailed, TaskCancelled: with `propagate`, when the task ended that way.
    """
    app = handle.app
    while True:
        record = app.store.get(handle.id)
        if record is None or record.status.terminal:
            break
        if record.status is TaskStatus.PENDING:
            ran = run_pending(app, [record.queue])
        elif record.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and record.scheduled_for:
            # Skip the wait: run the schedule as it will be when this attempt is due.
            ran = run_pending(app, [record.queue], now=record.scheduled_for)
        else:
            return  # RUNNING: another worker (or an outer eager call) owns it now
        if not ran and app.store.get(handle.id) == record:
            return  # nothing moved: its message is with another consumer of the queue
    if propagate and handle.done():
        handle.value()  # raises the task's TaskFailed / TaskCancelled


# -- a worker in a thread ----------------------------------------------------------------------------------


class WorkerThread:
    """A real `Worker` consuming in a background thread of this process.

    Tasks run in this process, so they see the test's mocks and module state. Use it as a context manager
    or call `start()` and `stop()`.

    Args:
        app: the app whose broker and store to use (default: the current app); any broker URL works.
        queues: queues to consume (default: the app's default queue).
        concurrency: pool slots.
        pool: `threads` (default) or `processes` (children do not see this process's mocks).
        grace: seconds running tasks get to finish at `stop()` before they are interrupted.
    """

    def __init__(
        self,
        app: Decortask | None = None,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 2,
        pool: str = "threads",
        grace: float = 5.0,
    ) -> None:
        self.app = app or current_app()
        self.worker = Worker(self.app, queues, concurrency=concurrency, pool=pool, grace=grace)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<WorkerThread {self.worker.id} {state} queues={','.join(self.queues)}>"

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def queues(self) -> list[str]:
        return self.worker.queues

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> WorkerThread:
        """Start consuming in a daemon thread; returns self."""
        if self._thread is not None:
            raise DecortaskError(f"{self!r} was already started; create a new WorkerThread")
        self._thread = threading.Thread(
            target=self._run, name=f"decortask-worker-{self.worker.id}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            # Kept for the test's thread: an error in a background thread would otherwise go unseen.
            self._error = exc
            logger.exception("worker %s stopped by an error", self.worker.id)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise DecortaskError(
                f"the worker thread died: {type(self._error).__name__}: {mask_text(str(self._error))}"
            ) from self._error

    def _check_alive(self) -> None:
        self._raise_error()
        if not self.running:
            raise DecortaskError(f"{self!r} is not running; call start() first")

    def wait(self, *handles: TaskHandle[Any], timeout: float = 30.0) -> list[TaskResult]:
        """Block until every handle's task reached a final state; returns their results in order.

        Raises:
            WaitTimeout: some task was not done within `timeout` seconds (the message lists them).
            DecortaskError: the worker thread died (the error it died of is chained).
        """
        deadline = time.monotonic() + timeout
        pending = list(handles)
        while True:
            self._check_alive()
            pending = [handle for handle in pending if not handle.done()]
            if not pending:
                return [handle.result() for handle in handles]
            if time.monotonic() >= deadline:
                shown = ", ".join(f"{h.name} {h.id} ({h.status.value})" for h in pending[:5])
                raise WaitTimeout(
                    f"{len(pending)} of {len(handles)} tasks not done after {timeout} s: {shown}; "
                    f"this worker consumes {','.join(self.queues)}: start it with the tasks' queues "
                    "(the decortask_worker marker's queues=) or wait longer"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming, give running tasks the grace period, and join the thread.

        Raises:
            DecortaskError: the worker died of an error (chained), or its thread did not end within
                the grace period plus `timeout` seconds (a task that ignores interruption).
        """
        thread = self._thread
        if thread is None:
            return
        self.worker.stop()
        thread.join(self.worker.grace + timeout)
        if thread.is_alive():
            self.worker.stop(interrupt=True)
            thread.join(timeout)
        if thread.is_alive():
            raise DecortaskError(
                f"{self!r} did not stop within {self.worker.grace + 2 * timeout:.0f} s: a running task "
                "ignores should_stop() and cannot be interrupted on the thread pool"
            )
        self._raise_error()


# -- an app per test ---------------------------------------------------------------------------------------

#: The apps `isolated_app` made, so a framework app bound during a test can find the test's app (contrib.flask).
_test_apps: weakref.WeakSet[Decortask] = weakref.WeakSet()


def isolated_test_app() -> Decortask | None:
    """The current app if it is a test's own (`isolated_app`, the pytest fixtures), else None."""
    current = app_module._default_app  # read directly: current_app() would build one if there is none
    return current if current is not None and current in _test_apps else None


@contextlib.contextmanager
def isolated_app(
    broker_url: str = MEMORY_URL, store_url: str = MEMORY_URL, **settings: Any
) -> Iterator[Decortask]:
    """An app of its own for one test, current for the block; then closed, and the previous app is current.

    Its default queue is `test-<random>` unless `default_queue` is given (that queue is purged first). It
    keeps the previous current app's `commit_hook` (set by the Django integration) and the middleware that
    gives tasks their framework's context (Flask's app context), not its other middleware. A Flask app
    bound while the block runs leaves this app current and lends it its app context the same way.
    On `memory://`, which every app in the process shares, the queues of registered tasks are purged on
    the way in and out, with their dead-letter queues; on a server broker the app's own default queue and
    its dead-letter queue are deleted at the end, and other queues are left alone (other processes may
    use them).

    Args:
        broker_url: the broker (default `memory://`).
        store_url: the store (default `memory://`, a fresh one per app).
        **settings: any other `Settings` field.
    """
    own_queue = "default_queue" not in settings
    if own_queue:
        settings["default_queue"] = f"test-{uuid.uuid4().hex[:10]}"
    previous = app_module._default_app  # read directly: current_app() would build one if there is none
    # Tasks that need their framework's context (Flask's current_app, its database) need it in tests too.
    inherited = [mw for mw in (previous.middleware if previous else []) if _inherited_by_test_apps(mw)]
    app = Decortask(broker_url, store_url, middleware=inherited, **settings)
    _test_apps.add(app)
    if previous is not None:
        # The framework's "after commit" (Django's transaction.on_commit) still applies to the test's code.
        app.commit_hook = previous.commit_hook
    try:
        _clean_queues(app, own_queue, finished=False)
        yield app
    finally:
        try:
            _clean_queues(app, own_queue, finished=True)
        finally:
            app.close()
            if previous is not None:
                previous.set_default()
            else:
                reset_default_app()


def _inherited_by_test_apps(middleware: object) -> bool:
    return bool(getattr(middleware, "inherited_by_test_apps", False))


def _clean_queues(app: Decortask, own_queue: bool, finished: bool) -> None:
    default = app.settings.default_queue
    if scheme_of(app.settings.broker_url) == "memory":
        names = {default} | {
            task.options.queue
            for task in map(app.registry.find, app.registry.names())
            if task is not None and task.options.queue
        }
        for name in sorted(names):
            for each in (name, name + ".dlq"):
                app.transport.purge(each)
    elif own_queue and finished:
        try:
            for each in (default, default + ".dlq"):
                app.transport.delete_queue(each)
        except BrokerUnavailable as exc:
            # Leftover test queues are no reason to fail the test that used them.
            logger.warning("could not delete the test queue %s (%s)", default, mask_text(str(exc)))
    elif not own_queue and not finished:
        app.transport.purge(default)
