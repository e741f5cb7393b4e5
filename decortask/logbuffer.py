"""A running attempt's log lines, held in memory and written with its next state write (issue 12).

Every line an attempt logs (`task_log()`, its captured `print()` and `logging` output, see `capture.py`)
goes into its `TaskLogBuffer` rather than being a store write of its own. The lines are written:

- with the attempt's outcome, in the same store transaction (the executor takes them with `close` and puts
  them on the outcome's `TransitionStep`);
- with a `ctx.set_progress()` or `ctx.set_output()` write, in the same store write (appended first), so
  a live view never shows progress ahead of the lines written before it;
- by the process's one `LogFlusher` thread, once the oldest line waiting is half the `log_flush_interval`
  old (checked every half interval), so live views see a long task's lines within that interval;
- at once when `MAX_PENDING` lines are waiting.

Lines reach the store in the order they were written, whichever of these writes them: one write at a
time per attempt (`_writing`), and `close` waits for one in flight. An outcome loses no line; a worker
that crashes loses at most the lines of the last interval. A task that logs nothing costs this buffer
object and nothing else: no list is filled, no flusher is told, no thread is started.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .security import mask_text
from .store.base import LogLine, TaskStore

logger = logging.getLogger("decortask.task")

#: Most lines an attempt holds before writing them at once.
MAX_PENDING = 100


@runtime_checkable
class LogBatchStore(Protocol):
    """A store that appends many log lines of one task in one write (SQLite, Redis, memory)."""

    def append_logs(self, task_id: str, lines: Sequence[LogLine]) -> None: ...


def write_lines(store: TaskStore, task_id: str, lines: Sequence[LogLine]) -> None:
    """Append `lines` to the task's log in one store write; a store error is logged, never raised (a
    store hiccup must not fail the task whose lines they are)."""
    if not lines:
        return
    try:
        if isinstance(store, LogBatchStore):
            store.append_logs(task_id, lines)
        else:
            for line in lines:
                store.append_log(task_id, line)
    except Exception as exc:
        logger.warning(
            "could not store %d log lines of task %s: %s", len(lines), task_id, mask_text(str(exc))
        )


class TaskLogBuffer:
    """The log lines of one attempt not written yet; made by the executor for every attempt it runs."""

    __slots__ = (
        "_closed",
        "_lines",
        "_lock",
        "_since",
        "_writing",
        "attempt",
        "interval",
        "store",
        "task_id",
    )

    def __init__(self, store: TaskStore, task_id: str, interval: float, attempt: int | None = None) -> None:
        """
        Args:
            interval: the `log_flush_interval` setting: most seconds a line waits before it is written.
            attempt: the attempt whose progress and output this writes: once it was settled elsewhere (its
                worker was cut off meanwhile), they no longer change the record.
        """
        self.store = store
        self.task_id = task_id
        self.attempt = attempt
        self.interval = interval
        self._lines: list[LogLine] = []
        self._since = 0.0  # monotonic time of the oldest line waiting
        self._lock = threading.Lock()  # guards _lines, _since and _closed
        self._writing = threading.Lock()  # held while lines taken from here are being written
        self._closed = False

    def add(self, line: LogLine) -> None:
        """Hold `line` for the next write (one made now when the buffer is full, or after `close`)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._lines.append(line)
                waiting = len(self._lines)
                if waiting == 1:
                    self._since = time.monotonic()
        if closed:  # a thread of the task that outlived it: written on its own
            write_lines(self.store, self.task_id, [line])
        elif waiting == 1:
            flusher.watch(self)
        elif waiting >= MAX_PENDING:
            self.flush()

    def flush(self, *, wait: bool = True) -> None:
        """Write the lines waiting now, in one store write. Without `wait`, skip if a write is in flight."""
        if not self._writing.acquire(blocking=wait):
            return
        try:
            with self._lock:
                lines, self._lines = self._lines, []
            write_lines(self.store, self.task_id, lines)
        finally:
            self._writing.release()

    def set_progress(self, progress: float, message: str | None) -> None:
        """Write the task's progress (`ctx.set_progress`), the lines waiting appended in the same write."""
        self._write_with(
            lambda lines: self.store.set_progress(
                self.task_id, progress, message, log_lines=lines, attempt=self.attempt
            )
        )

    def set_output(self, output: Any) -> None:
        """Write the task's partial output (`ctx.set_output`), the lines waiting appended in the same write."""
        self._write_with(
            lambda lines: self.store.set_output(self.task_id, output, log_lines=lines, attempt=self.attempt)
        )

    def _write_with(self, write: Callable[[list[LogLine]], None]) -> None:
        with self._writing:
            with self._lock:
                lines, self._lines = self._lines, []
            try:
                write(lines)
            except BaseException:
                if lines:  # they wait for the next write, ahead of any added meanwhile
                    with self._lock:
                        self._lines[:0] = lines
                    flusher.watch(self)
                raise

    def due(self, now: float) -> bool:
        """Whether the oldest line waiting is old enough for the interval flush."""
        return bool(self._lines) and now - self._since >= self.interval / 2

    def close(self) -> list[LogLine]:
        """The lines not written yet, for the outcome's write; later lines are written one by one.

        Waits for a write in flight, so every line written before is in the store before the outcome's.
        """
        with self._writing, self._lock:
            self._closed = True
            lines, self._lines = self._lines, []
        return lines


class LogFlusher:
    """One thread per process writing the lines of buffers that waited long enough (started on first use).

    It knows only buffers with lines waiting: a buffer tells it on its first line after a write, and is
    forgotten once found empty. With none, the thread sleeps until told (an idle worker never wakes it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._told = threading.Condition(self._lock)
        self._buffers: set[TaskLogBuffer] = set()
        self._tick: float | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, buffer: TaskLogBuffer) -> None:
        """Flush `buffer` once its oldest line is due."""
        with self._lock:
            if not self._buffers:
                self._told.notify()
            self._buffers.add(buffer)
            tick = buffer.interval / 2
            if self._tick is None or tick < self._tick:
                self._tick = tick
            if self._thread is None or self._pid != os.getpid():  # none yet, or the parent's (a fork)
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="decortask-log-flusher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._buffers:
                    self._told.wait()
            time.sleep(self._tick or 0.25)
            try:
                self.flush_due(time.monotonic())
            except Exception:  # never let the thread die: later lines would wait for their outcome
                logger.exception("writing waiting task log lines failed; carrying on")

    def flush_due(self, now: float) -> None:
        """Write the lines of every buffer whose oldest line is due; forget the buffers found empty."""
        with self._lock:
            buffers = list(self._buffers)
        for buffer in buffers:
            if buffer.due(now):
                buffer.flush(wait=False)  # busy: its own full-buffer write or its close is under way
        with self._lock:
            for buffer in buffers:
                if not buffer._lines:  # read under this lock: a line added since re-registers after it
                    self._buffers.discard(buffer)


#: The process's flusher.
flusher = LogFlusher()
