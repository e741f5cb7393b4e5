"""TaskContext, `get_task_context()` and `task_log()`: what a running task can see of itself."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DecortaskError
from .logbuffer import TaskLogBuffer
from .security import mask_fields, mask_text
from .store.base import LogLine

if TYPE_CHECKING:
    from .canvas import Signature
    from .handle import TaskHandle
    from .late_results import ChildResult

logger = logging.getLogger("decortask.task")

#: Largest `ctx.set_output()` value, as encoded JSON.
MAX_OUTPUT_BYTES = 16 * 1024

_current: ContextVar[TaskContext | None] = ContextVar("decortask_task_context", default=None)


@dataclass
class TaskContext:
    """Injected into a task whose parameter is annotated `TaskContext`; also `get_task_context()`.

    Attributes:
        task_id: the task's id.
        name: the registered task name.
        attempt: which attempt this is, starting at 1.
        queue: the queue the message came from.
        tags: the tags given at `.apply_async(tags=...)`.
        worker_id: the worker running this attempt ("local" for a direct call).
    """

    task_id: str
    name: str
    attempt: int = 1
    queue: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    worker_id: str = "local"
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    #: This attempt's log lines not written yet (`logbuffer.py`); None outside a worker (a direct call).
    _log: TaskLogBuffer | None = field(default=None, repr=False, compare=False)
    _progress_sink: Callable[[float, str | None], None] | None = field(default=None, repr=False)
    _output_sink: Callable[[Any], None] | None = field(default=None, repr=False)
    #: This attempt's captured print()/logging output (`capture.TaskOutput`), made on its first line.
    _capture: Any = field(default=None, repr=False, compare=False)
    #: The children this attempt spawned (`late_results.Children`), made by its first `spawn()`.
    _children: Any = field(default=None, repr=False, compare=False)

    def should_stop(self) -> bool:
        """True once the task should wind down: cancellation, time limit or worker shutdown."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask this task to stop cooperatively (what cancellation and shutdown call)."""
        self._stop.set()

    def set_progress(self, progress: float, message: str | None = None) -> None:
        """Record progress between 0.0 and 1.0, with an optional message, readable from the handle."""
        if not 0.0 <= float(progress) <= 1.0:
            raise ValueError(f"progress must be between 0.0 and 1.0, got {progress!r}")
        if self._progress_sink is not None:
            try:
                self._progress_sink(float(progress), message)
            except Exception as exc:  # progress is advisory: never fail the task over it
                logger.warning("could not store progress of task %s: %s", self.task_id, mask_text(str(exc)))

    def set_output(self, output: dict[str, Any]) -> None:
        """Publish a partial output while running (a row count, a file link), readable live from the handle.

        Each call replaces the last one; it is kept apart from the task's result. `output` must be a JSON
        object of at most `MAX_OUTPUT_BYTES` encoded.

        Raises:
            TypeError: `output` is not a dict, or holds a value JSON cannot encode.
            ValueError: `output` is larger than `MAX_OUTPUT_BYTES` encoded.
        """
        if not isinstance(output, dict):
            raise TypeError(f"set_output() takes a dict (a JSON object), got {type(output).__name__}")
        try:
            text = json.dumps(output, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"set_output() needs JSON values: {exc}") from None
        if len(text.encode()) > MAX_OUTPUT_BYTES:
            raise ValueError(
                f"set_output() got {len(text.encode())} bytes of JSON; at most {MAX_OUTPUT_BYTES} are kept "
                "(store a link to larger data instead)"
            )
        if self._output_sink is not None:
            try:
                self._output_sink(json.loads(text))  # a plain JSON copy, as every store would give back
            except Exception as exc:  # advisory, like progress: never fail the task over it
                logger.warning("could not store the output of task %s: %s", self.task_id, mask_text(str(exc)))

    def spawn(self, sig: Signature[Any], *, on_late: Signature[Any] | None = None) -> TaskHandle[Any]:
        """Start `sig` (e.g. `add.s(1, 2)`) as a child of this task, in the background; its handle.

        While this task runs, `results()` yields the child's result once it ends. If it ends after this
        task did (or this task never took it), `on_late` is sent with the child's `ChildResult.to_dict()`
        first, once (docs/workflows.md, "Late results"). An attempt run again that spawns again gets the
        same children back (the n-th spawn has the same id), not new ones.
        """
        from .late_results import spawn

        return spawn(self, sig, on_late)

    def results(self, timeout: float | None = None) -> Iterator[ChildResult]:
        """Yield each child's `ChildResult` once, as it ends (hot merge), until every child spawned by this
        attempt has been yielded, `timeout` seconds passed, or the task should stop. A child not yielded
        then is a late result: it goes to its `on_late` follow-up once this task ended."""
        from .late_results import results

        return results(self, timeout)

    def aresults(self, timeout: float | None = None) -> AsyncIterator[ChildResult]:
        """`results()` for an `async def` task: `async for child in ctx.aresults(timeout=...)`."""
        from .late_results import aresults

        return aresults(self, timeout)

    def log(self, message: str, **extra: Any) -> None:
        """Same as `task_log()` for this task."""
        line = LogLine(
            ts=time.time(), message=mask_text(str(message)), attempt=self.attempt, extra=mask_fields(extra)
        )
        # Marked, so the log handler's task filter does not name the task a second time.
        logger.info("[%s %s] %s", self.name, self.task_id, line.message, extra={"decortask_task_line": True})
        if self._log is None:
            return
        if extra:  # checked now: a line that cannot be encoded must not hold up the outcome it rides with
            try:
                json.dumps(line.extra)
            except (TypeError, ValueError) as exc:
                logger.warning(
                    "a log line of task %s was not stored: its extra is not JSON (%s)", self.task_id, exc
                )
                return
        self._log.add(line)

    def flush_log(self) -> None:
        """Write this attempt's log lines that are waiting (they are written with its next state write,
        and at least every `log_flush_interval` seconds, anyway)."""
        if self._log is not None:
            self._log.flush()


def get_task_context() -> TaskContext:
    """The context of the task running in this thread or coroutine.

    Raises:
        DecortaskError: when called outside a running task.
    """
    ctx = _current.get()
    if ctx is None:
        raise DecortaskError(
            "get_task_context() was called outside a running task; call it from inside a @task function"
        )
    return ctx


def current_task_context() -> TaskContext | None:
    """The running task's context, or None outside a task."""
    return _current.get()


def task_log(message: str, **extra: Any) -> None:
    """Log a line that is stored with the running task (and shown by the CLI and dashboard).

    Outside a task the line goes to the `decortask.task` logger only. `extra` values must be JSON.
    """
    ctx = _current.get()
    if ctx is None:
        logger.info("%s", mask_text(str(message)))
        return
    ctx.log(message, **extra)


def activate(ctx: TaskContext) -> Any:
    """Make `ctx` current; returns the token for `deactivate`."""
    return _current.set(ctx)


def deactivate(token: Any) -> None:
    """Undo `activate`; the attempt's captured output (if any) joins its log lines now (its unfinished
    line, its truncation marker)."""
    ctx = _current.get()
    if ctx is not None and ctx._capture is not None:
        ctx._capture.finish()
    _current.reset(token)
