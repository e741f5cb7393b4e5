"""The Charts view's data: the last hour of ended tasks from the store, and queue depth sampled in memory.

Per minute of the last hour, how many tasks ended in each final state (by `finished_at`); per five minutes,
the runtime percentiles of the tasks that ended then (`finished_at - started_at`); and the ready messages of
each queue, which the dashboard process samples itself every QUEUE_SAMPLE_SECONDS (the broker keeps no
history), so that chart covers only the time since the dashboard started.

The store is read newest first through `TaskQuery(created_after=...)` pages (an index walk on every store),
at most SCAN_CAP records, and the answer is cached for CACHE_SECONDS: a busy dashboard scans once per
CACHE_SECONDS whatever its number of viewers. Nothing about a single task (id, name, arguments) is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DecortaskError
from ..states import TaskStatus
from ..store.base import TaskQuery, TaskRecord

if TYPE_CHECKING:
    from ..store.base import TaskStore

#: The span the charts cover, in seconds, and their buckets.
WINDOW = 3600
MINUTE = 60
RUNTIME_BUCKET = 300
#: Records created this long ago or less are read: a task that ran longer than the gap is not counted.
SCAN_SPAN = 2 * WINDOW
#: Most records read per scan; past it the charts say they show the newest SCAN_CAP tasks.
SCAN_CAP = 20_000
SCAN_PAGE = 500
CACHE_SECONDS = 15.0
QUEUE_SAMPLE_SECONDS = 30.0
FINAL_STATES = (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED)
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Ended:
    """What the charts need of one ended task."""

    status: TaskStatus
    finished_at: float
    started_at: float | None
    attempt: int


def scan(store: TaskStore, now: float, cap: int = SCAN_CAP) -> tuple[list[Ended], int, bool]:
    """The ended tasks among the records created in the last SCAN_SPAN, newest first, at most `cap` read.

    Returns the ended tasks, the number of records read, and whether the cap stopped the walk.
    """
    ended: list[Ended] = []
    read = 0
    while read < cap:
        limit = min(SCAN_PAGE, cap - read)
        page = store.list_tasks(TaskQuery(created_after=now - SCAN_SPAN, limit=limit, offset=read))
        read += len(page)
        ended.extend(_ended(record) for record in page if _has_ended(record))
        if len(page) < limit:
            return ended, read, False
    return ended, read, True


def _has_ended(record: TaskRecord) -> bool:
    return record.status in FINAL_STATES and record.finished_at is not None


def _ended(record: TaskRecord) -> Ended:
    assert record.finished_at is not None  # _has_ended
    return Ended(record.status, record.finished_at, record.started_at, record.attempt)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def buckets(ended: Iterable[Ended], now: float) -> dict[str, Any]:
    """Per-minute counts by final state and per-five-minute runtime percentiles over the WINDOW before `now`.

    Buckets are aligned to the clock: the last one is the current (partial) minute or five minutes.
    `retries` of a minute are the attempts before the last of the tasks that ended in it (the store keeps
    one record per task, not a time per attempt, so retries are counted when their task ends).
    """
    minute_end = (math.floor(now / MINUTE) + 1) * MINUTE
    minute_start = minute_end - WINDOW
    slow_end = (math.floor(now / RUNTIME_BUCKET) + 1) * RUNTIME_BUCKET
    slow_start = slow_end - WINDOW
    minutes: list[dict[str, Any]] = [
        {"start": minute_start + i * MINUTE, **{s.value: 0 for s in FINAL_STATES}, "retries": 0}
        for i in range(WINDOW // MINUTE)
    ]
    runtimes: list[list[float]] = [[] for _ in range(WINDOW // RUNTIME_BUCKET)]
    for task in ended:
        if minute_start <= task.finished_at < minute_end:
            row = minutes[int((task.finished_at - minute_start) // MINUTE)]
            row[task.status.value] += 1
            row["retries"] += max(0, task.attempt - 1)
        if task.started_at is not None and slow_start <= task.finished_at < slow_end:
            runtimes[int((task.finished_at - slow_start) // RUNTIME_BUCKET)].append(
                max(0.0, task.finished_at - task.started_at)
            )
    runtime_rows = []
    for i, values in enumerate(runtimes):
        values.sort()
        row = {"start": slow_start + i * RUNTIME_BUCKET, "count": len(values)}
        row.update({f"p{p}": percentile(values, p) if values else None for p in PERCENTILES})
        runtime_rows.append(row)
    return {"minutes": minutes, "runtime": runtime_rows}


class QueueDepth:
    """A ring of the queue panel's ready counts, one sample per QUEUE_SAMPLE_SECONDS, for the last WINDOW."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.time() if started is None else started
        self.samples: deque[dict[str, Any]] = deque(maxlen=int(WINDOW // QUEUE_SAMPLE_SECONDS) + 1)
        self._lock = threading.Lock()

    def add(self, ts: float, rows: Iterable[dict[str, Any]]) -> None:
        """Keep one sample: each queue's `ready` (None where the broker did not answer)."""
        sample = {"ts": ts, "ready": {row["name"]: row.get("ready") for row in rows}}
        with self._lock:
            self.samples.append(sample)

    def snapshot(self, now: float) -> dict[str, Any]:
        with self._lock:
            samples = [s for s in self.samples if s["ts"] >= now - WINDOW]
        return {
            "interval": QUEUE_SAMPLE_SECONDS,
            "since": self.started,
            "full_hour": now - self.started >= WINDOW,
            "samples": samples,
        }


class Activity:
    """The `/api/activity` answer, cached for CACHE_SECONDS; one scan at a time (callers wait for it)."""

    def __init__(self, store_of: Callable[[], TaskStore], cap: int = SCAN_CAP) -> None:
        self._store_of = store_of
        self.cap = cap
        self.queue_depth = QueueDepth()
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def report(self, now: float | None = None) -> dict[str, Any]:
        """Counts, percentiles and queue depth for the hour before `now` (blocking: run it in a thread)."""
        with self._lock:
            clock = time.time() if now is None else now
            if self._cached is not None and 0 <= clock - self._cached[0] < CACHE_SECONDS:
                computed_at, store_part = self._cached
            else:
                ended, read, capped = scan(self._store_of(), clock, self.cap)
                store_part = {**buckets(ended, clock), "read": read, "capped": capped, "cap": self.cap}
                computed_at = clock
                self._cached = (computed_at, store_part)
        return {
            "now": computed_at,
            "window": WINDOW,
            "minute": MINUTE,
            "runtime_bucket": RUNTIME_BUCKET,
            "states": [s.value for s in FINAL_STATES],
            **store_part,
            "queues": self.queue_depth.snapshot(computed_at),
        }

    async def sample_queues(
        self, read_queues: Callable[[], list[dict[str, Any]]], closing: asyncio.Event
    ) -> None:
        """Sample `read_queues()` (the queue panel's rows, read in a thread) until `closing` is set."""
        while not closing.is_set():
            try:
                rows = await asyncio.to_thread(read_queues)
            except (DecortaskError, OSError):
                pass  # the store is unreachable: a gap in the chart, not a dead sampler
            else:
                self.queue_depth.add(time.time(), rows)
            with contextlib.suppress(asyncio.TimeoutError):  # the next sample is due
                await asyncio.wait_for(closing.wait(), QUEUE_SAMPLE_SECONDS)
