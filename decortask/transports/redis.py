"""kombu's Redis transport with a cheaper publish path; message format, priorities and acks are kombu's.

kombu's Redis channel builds a new redis-py client for every publish (and for every `_get`, `_size` and
ack bookkeeping call) through `conn_or_acquire`; building one costs about as much as the LPUSH round trip
itself. The client is a thin object over the channel's connection pool, so this channel keeps one and
reuses it: the commands, the pool and the connections they use are the same as before. Delivery tags are
a per-channel random prefix and a counter instead of a uuid4 per message.

A batch (`Producer.batch()`, used by `publish_many`) is pushed as one `LPUSH` of many values per queue
(and priority list) instead of one `LPUSH` per message, in kombu's non-transactional pipeline.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis


class GroupedPublishBatch(kombu_redis.PublishBatch):  # type: ignore[misc]
    """kombu's publish batch, with the pushes to one list sent as a single multi-value `LPUSH`.

    `LPUSH key a b c` pushes a, then b, then c, exactly like three `LPUSH`es, so consumers (which pop
    from the other end) see the same order.
    """

    _collecting: list[tuple[str, tuple[Any, ...]]] | None

    def __init__(self, channel: Any, max_size: int) -> None:
        #: (command, args) held back until the flush, so the pushes to one list can be merged.
        self._queued: list[tuple[str, tuple[Any, ...]]] = []
        super().__init__(channel, max_size)

    def publish(self, message: Any, **kwargs: Any) -> Any:
        self._check_usable()
        commands: list[tuple[str, tuple[Any, ...]]] = []
        self._collecting = commands
        try:
            result = self.channel.basic_publish(message, _publish_batch=self, **kwargs)
        finally:
            self._collecting = None
        if commands:
            if self._buffered and self._buffered + len(commands) > self.max_size:
                self.flush()
            self._queued.extend(commands)
            self._buffered += len(commands)
            if self._buffered >= self.max_size:
                self.flush()
        return result

    def flush(self) -> None:
        self._check_usable()
        queued, self._queued = self._queued, []
        try:
            for name, args in _grouped(queued):
                getattr(self.pipeline, name)(*args)
        except BaseException as exc:
            self._failed = exc
            self._buffered = 0
            self.pipeline.reset()
            raise
        super().flush()

    def discard(self) -> None:
        self._queued = []
        super().discard()


def _grouped(commands: list[tuple[str, tuple[Any, ...]]]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """`commands` with each run of LPUSHes to one key merged into one LPUSH; everything else in place."""
    key: Any = None
    values: list[Any] = []
    for name, args in commands:
        if name == "lpush" and values and args[0] == key:
            values.extend(args[1:])
            continue
        if values:
            yield "lpush", (key, *values)
            values = []
        if name == "lpush":
            key, values = args[0], list(args[1:])
        else:
            yield name, args
    if values:
        yield "lpush", (key, *values)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, reusing one redis-py client instead of building one per call."""

    _reused_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tag_prefix = uuid.uuid4().hex + "."
        self._tag_count = itertools.count(1)
        super().__init__(*args, **kwargs)

    def _next_delivery_tag(self) -> str:
        # The tag keys the unacked bookkeeping every consumer shares, so it must be unique across producers;
        # a random prefix per channel and a counter are, without kombu's uuid4 per message.
        return f"{self._tag_prefix}{next(self._tag_count)}"

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # kombu replaces the pool after a fork: a client on the old one is not reused
        reused = self._reused_client
        if reused is None or reused.connection_pool is not pool:
            reused = self._reused_client = self._create_client()
        yield reused

    def create_publish_batch(self, max_size: int) -> GroupedPublishBatch:
        return GroupedPublishBatch(self, max_size)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with decortask's channel."""

    Channel = Channel


def redis_connection(url: str, **options: Any) -> kombu.Connection:
    """A kombu connection to `url` (redis:// or rediss://) that uses this module's transport.

    kombu reads the URL (host, credentials, database, TLS options) as for its own transport; only the class
    that builds the channels is swapped.
    """
    conn = kombu.Connection(url, **options)
    conn.transport_cls = Transport
    return conn
