"""A running task's `print()` output and its own `logging` lines, stored with the task (its log).

A worker registers its store here (`enable_for`, when the `capture_output` setting is on). Two process-wide
hooks then route by the task context current in the thread or coroutine (`context.py`'s contextvar):
`sys.stdout` becomes a proxy that hands a task's writes to that task's buffer and everything else to the
real stdout, and a handler on the root logger copies the records of the task's own loggers (not
decortask's: `task_log()` lines are stored already). So eight threads printing at once each keep their
own lines, and the worker's output is untouched.

Cost: nothing is allocated for a task that prints and logs nothing (its buffer is made on its first
line). Lines are masked and join the attempt's other log lines (`logbuffer.py`), in the order written:
they are written with its next state write (its outcome, in the same transaction), at least every
`log_flush_interval` seconds, and at once when `FLUSH_LINES` wait. An attempt stores at most
`MAX_LINES` lines and `MAX_BYTES` of text; past that one marker line says how many lines were dropped.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any, cast

from .context import TaskContext, current_task_context
from .logbuffer import MAX_PENDING, write_lines
from .security import mask_text
from .store.base import LogLine, TaskStore

#: Most lines one attempt stores (stdout and logging together); the rest are counted, not kept.
MAX_LINES = 1000
#: Most characters of captured text one attempt stores.
MAX_BYTES = 64 * 1024
#: A longer line is cut here (a progress bar redrawn with `\r`, a dumped blob).
MAX_LINE_CHARS = 2000
#: Lines buffered before they are written: a chatty task makes one store write per this many lines.
FLUSH_LINES = MAX_PENDING

#: Worker ids whose tasks are captured, with the store their lines go to.
_stores: dict[str, TaskStore] = {}
_registry_lock = threading.Lock()


class TaskOutput:
    """One attempt's captured lines: bounded and masked, handed to the attempt's log buffer."""

    def __init__(self, ctx: TaskContext, store: TaskStore) -> None:
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt
        self.store = store
        self.log = ctx._log  # None: a context made outside the executor; each line is then its own write
        # Re-entrant: a store write made while adding a line (a full buffer) may log through the user's
        # handlers in this very thread, which captures that record too.
        self._lock = threading.RLock()
        self._partial: list[str] = []  # stdout text since the last newline
        self._lines = 0
        self._chars = 0
        self._dropped = 0

    def write_stdout(self, text: str) -> None:
        """Take a `sys.stdout.write` of the task; whole lines become log lines."""
        with self._lock:
            if "\n" not in text:
                self._partial.append(text)
                return
            head, *middle, tail = text.split("\n")
            self._add(("".join(self._partial) + head), "stdout", None)
            for line in middle:
                self._add(line, "stdout", None)
            self._partial = [tail] if tail else []

    def add_record(self, record: logging.LogRecord, text: str) -> None:
        """Take one record of the task's own logging."""
        with self._lock:
            self._add(text, "logging", {"level": record.levelname, "logger": record.name})

    def _add(self, text: str, source: str, more: dict[str, Any] | None) -> None:
        if self._lines >= MAX_LINES or self._chars >= MAX_BYTES:
            self._dropped += 1
            return
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + " [cut]"
        self._lines += 1
        self._chars += len(text)
        extra = {"source": source, **(more or {})}
        self._emit(LogLine(ts=time.time(), message=mask_text(text), attempt=self.attempt, extra=extra))

    def _emit(self, line: LogLine) -> None:
        # Under the lock: lines reach the buffer in the order they were captured.
        if self.log is not None:
            self.log.add(line)
        else:
            write_lines(self.store, self.task_id, [line])

    def finish(self) -> None:
        """The attempt ends: its unfinished stdout line and the truncation marker join its log."""
        with self._lock:
            if self._partial:
                self._add("".join(self._partial), "stdout", None)
                self._partial = []
            if self._dropped:
                marker = f"output truncated: {self._dropped} more lines not stored (limit {MAX_LINES} lines, {MAX_BYTES // 1024} KB per attempt)"
                extra = {"source": "capture", "truncated": self._dropped}
                self._emit(LogLine(time.time(), marker, self.attempt, extra))
                self._dropped = 0


def output_of(ctx: TaskContext) -> TaskOutput | None:
    """The capture buffer of `ctx`'s attempt (made on first use), or None when its worker captures nothing."""
    output = ctx._capture
    if output is None:
        store = _stores.get(ctx.worker_id)
        if store is None:
            return None
        output = ctx._capture = TaskOutput(ctx, store)
    return cast(TaskOutput, output)


class RoutingStdout:
    """`sys.stdout` while a worker captures: a task's writes go to its buffer, others to the real stdout."""

    def __init__(self, real: IO[str]) -> None:
        self.real = real

    def write(self, text: str) -> int:
        ctx = current_task_context()
        if ctx is not None:
            output = output_of(ctx)
            if output is not None:
                output.write_stdout(str(text))
                return len(text)
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer...: the real stream's
        return getattr(self.real, name)


class CaptureHandler(logging.Handler):
    """On the root logger: copies the records a task's own loggers emit into its buffer."""

    def __init__(self) -> None:
        super().__init__()
        self._text = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler-wide lock: each buffer has its own, so threads of different tasks never wait on each
        # other here (and a batch written to the store holds up only its own task).
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "decortask" or record.name.startswith("decortask."):
            return  # the framework's lines: task_log() is stored already, the rest are the worker's
        ctx = current_task_context()
        if ctx is None:
            return
        output = output_of(ctx)
        if output is None:
            return
        try:
            text = self._text.format(record)
        except Exception:
            self.handleError(record)
            return
        output.add_record(record, text)


_handler = CaptureHandler()


def enable_for(worker_id: str, store: TaskStore) -> None:
    """Capture the output of the tasks that worker `worker_id` runs, into `store`; installs the hooks."""
    with _registry_lock:
        _stores[worker_id] = store
        if not isinstance(sys.stdout, RoutingStdout):
            sys.stdout = cast(Any, RoutingStdout(sys.stdout))
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)


def disable_for(worker_id: str) -> None:
    """Stop capturing for `worker_id`; the last worker out takes the hooks away."""
    with _registry_lock:
        _stores.pop(worker_id, None)
        if _stores:
            return
        if isinstance(sys.stdout, RoutingStdout):
            sys.stdout = sys.stdout.real
        logging.getLogger().removeHandler(_handler)
