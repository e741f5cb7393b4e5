"""Live updates: a feed of task changes read from the store, streamed to the page as server-sent events.

With the `events` setting on, a stream reads the store's event feed (`EventChanges`, docs/events.md): every
state change of every task, in order, each sent as the task's row at that state, none collapsed however fast
the task. Otherwise (`ChangeFeed`) each stream polls the store about twice a second. A poll reads the newest tasks and every
task that has not ended, and compares each with what the stream last saw (state, attempt, update time,
progress, number of log lines). A task that was unfinished last time and is missing from both lists now has
ended and aged out of the newest ones; it is read by id, so its final state is never missed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..events import EventSubscriber
from ..security import mask_text
from ..states import TERMINAL, TaskStatus
from ..store.base import TaskQuery, TaskRecord
from .queries import status_counts, task_summary

if TYPE_CHECKING:
    from ..app import Decortask

#: Newest tasks each poll reads, besides every unfinished one (up to ACTIVE_LIMIT).
RECENT = 100
ACTIVE_LIMIT = 1000
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE = 15.0
_UNFINISHED = frozenset(TaskStatus) - TERMINAL

Fingerprint = tuple[str, int, float, Any, Any, int]


def _fingerprint(record: TaskRecord) -> Fingerprint:
    return (
        record.status.value,
        record.attempt,
        record.updated_at,
        record.progress,
        record.progress_message,
        len(record.logs),
    )


class ChangeFeed:
    """Task changes since the previous `poll()`; the first poll only takes the baseline.

    One feed per stream; not shared between threads.
    """

    def __init__(self, app: Decortask) -> None:
        self.app = app
        self._seen: dict[str, Fingerprint] = {}
        self._started = False

    def poll(self) -> list[dict[str, Any]]:
        """Summaries of the tasks that appeared or changed since the last poll, oldest change first."""
        store = self.app.store
        current: dict[str, TaskRecord] = {}
        for record in store.list_tasks(TaskQuery(limit=RECENT)):
            current[record.id] = record
        for record in store.list_tasks(TaskQuery(statuses=_UNFINISHED, limit=ACTIVE_LIMIT)):
            current[record.id] = record
        for task_id, seen in self._seen.items():
            if task_id not in current and seen[0] not in _TERMINAL_VALUES:
                ended = store.get(task_id)
                if ended is not None:
                    current[task_id] = ended
        changed = [r for r in current.values() if self._seen.get(r.id) != _fingerprint(r)]
        self._seen = {task_id: _fingerprint(r) for task_id, r in current.items()}
        if not self._started:
            self._started = True
            return []
        changed.sort(key=lambda r: r.updated_at)
        return [task_summary(r) for r in changed]


_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
#: How often a stream reads the event feed (an indexed read of what is new, not a poll of the tasks).
FEED_INTERVAL = 0.1


class EventChanges:
    """Task changes read from the store's event feed: each event as the task's row at that moment.

    The first poll only starts (the feed is read from the moment the stream began). A task deleted since its
    event was written is skipped; events trimmed before the stream read them are skipped too (the counts
    sent after each batch stay right).
    """

    def __init__(self, app: Decortask) -> None:
        self.app = app
        self.subscriber = EventSubscriber(app, since="now")
        self._started = False

    def poll(self) -> list[dict[str, Any]]:
        """Summaries of the tasks whose events came since the last poll, one per event, in feed order."""
        if not self._started:
            self._started = True
            return []
        events = [e for e in self.subscriber.poll() if e.task_id is not None]
        store = self.app.store
        records = {task_id: store.get(task_id) for task_id in {e.task_id for e in events if e.task_id}}
        rows: list[dict[str, Any]] = []
        for event in events:
            record = records.get(event.task_id or "")
            if record is None:
                continue
            row = task_summary(record)
            if event.kind != "log":  # the row as it was at this event, not as it is now
                row.update(
                    status=event.status.value if event.status else row["status"],
                    attempt=event.attempt,
                    reason=event.reason,
                    owner=event.worker,
                    updated_at=event.ts,
                    started_at=event.started_at,
                    finished_at=event.finished_at,
                    progress=event.progress,
                    progress_message=event.message,
                    error_type=event.error_type,
                )
            rows.append(row)
        return rows


def live_feed(app: Decortask) -> tuple[ChangeFeed | EventChanges, float | None]:
    """The feed a stream reads, and the interval it wants (None: the dashboard's poll interval)."""
    if app.settings.events:
        return EventChanges(app), FEED_INTERVAL
    return ChangeFeed(app), None


def _problem(exc: BaseException) -> str:
    return mask_text(f"{type(exc).__name__}: {exc}")


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event; `data` as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(
    app: Decortask,
    run: Callable[..., Any],
    interval: float,
    closing: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The event stream: `hello` with the counts, then `task` events per change and fresh `counts` after them.

    `run(fn, *args)` runs blocking store calls in a thread. Ends when `closing` is set (server shutdown);
    a client that goes away ends it through the ASGI server's disconnect.
    """
    feed, feed_interval = live_feed(app)
    interval = feed_interval or interval
    counter = 0
    yield b"retry: 2000\n\n"
    try:
        await run(feed.poll)
        yield sse("hello", {"counts": await run(status_counts, app), "interval": interval})
    except Exception as exc:  # the store is down: say why; the browser reconnects after `retry`
        yield sse("problem", {"error": _problem(exc)})
        return
    last_sent = time.monotonic()
    while not closing.is_set():
        try:
            await asyncio.wait_for(closing.wait(), timeout=interval)
            break
        except asyncio.TimeoutError:
            pass
        try:
            changes = await run(feed.poll)
        except Exception as exc:  # a store outage: say so and keep the stream, the next poll may work
            yield sse("problem", {"error": _problem(exc)})
            last_sent = time.monotonic()
            continue
        for change in changes:
            counter += 1
            yield sse("task", change, counter)
        if changes:
            yield sse("counts", await run(status_counts, app))
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= KEEPALIVE:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()
