"""State stores: where every task's record and the schedule of delayed work live."""

from __future__ import annotations

from .base import LogLine, ScheduleEntry, TaskQuery, TaskRecord, TaskStore

__all__ = ["LogLine", "ScheduleEntry", "TaskQuery", "TaskRecord", "TaskStore", "open_store"]


def open_store(url: str, *, events: int = 0) -> TaskStore:
    """Open the store a URL names: `sqlite:///path.db`, `redis://host:port/db`,
    `postgresql://user@host:5432/db` or `memory://`.

    `events` > 0: its writes also append to the event feed, which keeps about that many (docs/events.md).
    """
    from ..errors import ConfigurationError, missing_extra
    from ..security import mask_url

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, events=events)
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisStore
        except ImportError as exc:
            raise missing_extra("the Redis store (redis://)", "redis", exc) from None
        return RedisStore(url, events=events)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise missing_extra("the PostgreSQL store (postgresql://)", "postgres", exc) from None
        return PostgresStore(url, events=events)
    raise ConfigurationError(
        f"unknown store URL {mask_url(url)!r}: use sqlite:///path.db, redis://host:6379/0, "
        "postgresql://user@host:5432/db or memory://"
    )
