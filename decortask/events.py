"""Live events for programs: every state change, progress update and log line of every task, in any process.

Events are the store's change feed, not a broker fan-out. With the `events` setting on (`Decortask(...,
events=True)`, `DECORTASK_EVENTS=1`, `decortask worker --events`), the store appends one event to a bounded
feed in the same atomic write as each change (SQLite: a table filled by triggers, `store/sqlite_events.py`;
Redis: a stream appended by the store's Lua scripts, `store/redis_events.py`). So an event exists exactly
when its change was written, events of one task come in the order of its changes, and none is lost while a
subscriber is away. Each subscriber reads at its own pace with its own cursor, in its own process: a slow,
stuck or crashed subscriber costs the workers nothing, and resumes where it stopped. A subscriber that falls
behind the feed's trim horizon (`events_max` events) gets one `gap` event saying how many it missed, never
silence. docs/events.md says more, and why not the broker.

    for event in EventSubscriber(app, since="now"):
        print(event.line())
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigurationError
from .security import mask_text, scrub
from .states import TaskStatus

if TYPE_CHECKING:
    from .app import Decortask
    from .store.base import TaskStore

__all__ = ["KINDS", "Event", "EventFeed", "EventSubscriber", "feed_for"]

#: What an event reports: a state change (a new record, a new status or attempt), a progress update, a
#: log line, or a gap (events trimmed from the feed before this subscriber read them).
KINDS = frozenset({"state", "progress", "log", "gap"})
#: How often a subscriber on a SQLite store looks for new events while it waits (Redis blocks instead).
SQLITE_POLL = 0.05


class EventFeed(Protocol):
    """A store's event feed, read by number: events are numbered 1, 2, 3, ... with no holes but trims."""

    def read(self, after: int, limit: int, wait: float) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` events numbered above `after`, oldest first; waits up to `wait` s for the first."""
        ...

    def bounds(self) -> tuple[int, int]:
        """(the oldest number kept, the newest number ever written); oldest is newest + 1 when empty."""
        ...

    def trim(self, keep: int) -> int:
        """Delete all but the newest `keep` events; how many were deleted."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Event:
    """One event of the feed. Never carries a task's arguments or result; text is masked.

    Attributes:
        cursor: the event's number in the feed; pass it as `since=` to resume after this event.
        kind: "state", "progress", "log" or "gap".
        ts: when the change was written (a log line: when it was logged), UNIX seconds.
        status: the task's status after the change (a log or progress event: its status at that time).
        worker: the worker process that owns the task's current attempt (None before it runs).
        message: the progress message, or the log line's text (masked).
        missed: a gap: how many events were trimmed before this subscriber could read them.
    """

    cursor: int
    kind: str
    ts: float
    task_id: str | None = None
    name: str | None = None
    queue: str | None = None
    status: TaskStatus | None = None
    attempt: int | None = None
    worker: str | None = None
    reason: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    message: str | None = None
    error_type: str | None = None
    missed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; `status` as its value."""
        data = dict(self.__dict__)
        data["status"] = self.status.value if self.status is not None else None
        return data

    def line(self) -> str:
        """One readable line: time, kind, status, task name and id, and what the event says."""
        when = datetime.fromtimestamp(self.ts, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        if self.kind == "gap":
            return f"{when} GAP {self.missed} events were trimmed from the feed before they could be read"
        parts = [when, f"{self.status.value if self.status else '-':<11}", f"{self.name} [{self.task_id}]"]
        if self.kind == "state":
            parts.append(f"attempt {self.attempt}")
            if self.worker:
                parts.append(f"worker {self.worker}")
            if self.reason:
                parts.append(f"reason {self.reason}")
            if self.error_type:
                parts.append(f"error {self.error_type}")
        elif self.kind == "progress":
            shown = f"{self.progress:.0%}" if isinstance(self.progress, (int, float)) else "-"
            parts.append(f"progress {shown}" + (f" {self.message}" if self.message else ""))
        else:
            parts.append(f"log: {self.message}")
        return " ".join(parts)


def feed_for(store: TaskStore) -> EventFeed:
    """The event feed of `store`; `ConfigurationError` for a store that keeps none (memory)."""
    from .store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return _SQLiteFeed(store)
    # Not imported here: the redis client is an extra, and a RedisStore exists only once its module is loaded.
    redis_store = sys.modules.get("decortask.store.redis")
    if redis_store is not None and isinstance(store, redis_store.RedisStore):
        from .store.redis_events import RedisEventFeed

        return RedisEventFeed(store._client, store.namespace)
    postgres_store = sys.modules.get("decortask.store.postgres")
    if postgres_store is not None and isinstance(store, postgres_store.PostgresStore):
        from .store.postgres_events import PostgresEventFeed

        return PostgresEventFeed(store)
    raise ConfigurationError(
        f"the store {type(store).__name__} keeps no event feed; events need a sqlite://, redis:// or "
        "postgresql:// store"
    )


class EventSubscriber:
    """Reads the event feed from a cursor, filtered; one per consumer, in any process.

    Args:
        app: the app whose store to read (default: the current app).
        store: read this store instead of the app's (`decortask events` opens it read-only).
        since: "now" (only what comes next), "oldest" (everything the feed still keeps), or a cursor
            (an `Event.cursor` seen before: resume after it).
        names, queues, states: keep only events of these task names, queues, statuses (None: all).
            Gap events are always kept: what was missed is unknown.
        kinds: keep only these kinds (default: all of `KINDS`).
        batch: most events read per call to the feed.
    """

    def __init__(
        self,
        app: Decortask | None = None,
        *,
        store: TaskStore | None = None,
        since: int | str = "now",
        names: Collection[str] | None = None,
        queues: Collection[str] | None = None,
        states: Collection[TaskStatus | str] | None = None,
        kinds: Collection[str] | None = None,
        batch: int = 500,
    ) -> None:
        if store is None:
            if app is None:
                from .app import current_app

                app = current_app()
            store = app.store
        unknown = set(kinds or ()) - KINDS
        if unknown:
            raise ConfigurationError(f"unknown event kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        self.feed = feed_for(store)
        self.names = frozenset(names) if names is not None else None
        self.queues = frozenset(queues) if queues is not None else None
        self.states = frozenset(TaskStatus(s) for s in states) if states is not None else None
        self.kinds = frozenset(kinds) if kinds is not None else KINDS
        self.batch = max(int(batch), 1)
        self.cursor = self._start(since)

    def _start(self, since: int | str) -> int:
        if since == "now":
            return self.feed.bounds()[1]
        if since == "oldest":
            return self.feed.bounds()[0] - 1
        if isinstance(since, int) or (isinstance(since, str) and since.isdigit()):
            return max(int(since), 0)
        raise ConfigurationError(f"since must be 'now', 'oldest' or a cursor (an integer), got {since!r}")

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """The events after the cursor (at most `batch` read), waiting up to `timeout` s for one; moves on."""
        events: list[Event] = []
        for number, fields in self.feed.read(self.cursor, self.batch, timeout):
            if number > self.cursor + 1:
                events.append(Event(number - 1, "gap", time.time(), missed=number - self.cursor - 1))
            self.cursor = number
            event = event_from_fields(number, fields)
            if self._wanted(event):
                events.append(event)
        return events

    def _wanted(self, event: Event) -> bool:
        return (
            event.kind in self.kinds
            and (self.names is None or event.name in self.names)
            and (self.queues is None or event.queue in self.queues)
            and (self.states is None or event.status in self.states)
        )

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they are written; ends once `timeout` s pass with none (None: never ends by itself)."""
        idle_since = time.monotonic()
        while True:
            wait = 1.0 if timeout is None else max(timeout - (time.monotonic() - idle_since), 0.0)
            found = self.poll(min(wait, 1.0))
            if found:
                yield from found
                idle_since = time.monotonic()
            elif timeout is not None and time.monotonic() - idle_since >= timeout:
                return

    __iter__ = events

    async def aevents(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """`events` for asyncio: each read of the feed runs in a thread, so the loop never blocks."""
        idle_since = time.monotonic()
        while True:
            wait = 1.0 if timeout is None else max(timeout - (time.monotonic() - idle_since), 0.0)
            found = await asyncio.to_thread(self.poll, min(wait, 1.0))
            if found:
                for event in found:
                    yield event
                idle_since = time.monotonic()
            elif timeout is not None and time.monotonic() - idle_since >= timeout:
                return

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.aevents()

    def close(self) -> None:
        self.feed.close()


def event_from_fields(number: int, fields: dict[str, Any]) -> Event:
    """An `Event` from what a feed stored; text masked, unknown fields ignored."""
    kind = str(fields.get("kind") or "state")
    status = fields.get("status")
    message: Any = fields.get("progress_message")
    ts = fields.get("updated_at") or fields.get("ts") or 0.0
    if kind == "log":
        line = fields.get("line") or {}
        message = line.get("message")
        ts = line.get("ts") or fields.get("ts") or ts
    progress = fields.get("progress")
    return Event(
        cursor=number,
        kind=kind,
        ts=float(ts),
        task_id=fields.get("id"),
        name=fields.get("name"),
        queue=fields.get("queue"),
        status=TaskStatus(status) if status else None,
        attempt=fields.get("attempt"),
        worker=fields.get("owner"),
        reason=fields.get("reason"),
        created_at=fields.get("created_at"),
        started_at=fields.get("started_at"),
        finished_at=fields.get("finished_at"),
        progress=scrub(progress) if isinstance(progress, (int, float)) else None,
        message=mask_text(str(message)) if message is not None else None,
        error_type=fields.get("error_type"),
    )


class _SQLiteFeed:
    """A SQLite store's events table (`store/sqlite_events.py`), read through the store's connections.

    SQLite cannot block until a row arrives: a read that may wait looks again every SQLITE_POLL seconds.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def read(self, after: int, limit: int, wait: float) -> list[tuple[int, dict[str, Any]]]:
        deadline = time.monotonic() + wait
        while True:
            found: list[tuple[int, dict[str, Any]]] = self.store.read_events(after, limit)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            time.sleep(min(SQLITE_POLL, left))

    def bounds(self) -> tuple[int, int]:
        oldest, newest = self.store.event_bounds()
        return int(oldest), int(newest)

    def trim(self, keep: int) -> int:
        return int(self.store.trim_events(keep))

    def close(self) -> None:
        return None
