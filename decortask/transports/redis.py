"""kombu's Redis transport with a cheaper publish path, batched fetches and batched acks.

kombu's Redis channel builds a new redis-py client for every publish (and for every `_get`, `_size` and
ack bookkeeping call) through `conn_or_acquire`; building one costs about as much as the LPUSH round trip
itself. The client is a thin object over the channel's connection pool, so this channel keeps one and
reuses it: the commands, the pool and the connections they use are the same as before. Delivery tags are
a per-channel random prefix and a counter instead of a uuid4 per message.

Publishing (`Channel.push_many`, what `BrokerTransport.publish_many` uses): the envelope kombu's producer
would write is built directly and each priority list gets one `LPUSH` of all its messages, in one round
trip; kombu's layers in between cost more than the push. A queue with an expiry goes through kombu's
`Producer.batch()` instead, where `GroupedPublishBatch` also merges the pushes to one list.

Consuming: kombu pops one message per `BRPOP` round trip and records it as unacked in a second (the
`unacked` hash and `unacked_index` sorted set), with a window between the two where a crash loses the
message; each ack is a third. Here, wherever kombu's poller would send a `BRPOP` (prefetch room, nothing
outstanding), the channel sends one Lua script (`FETCH_SCRIPT`) instead, on the same connection and
without waiting: it pops up to the free room from the consumed queues in kombu's order (priority lists
first, then the queue cycle, rotated per message) and records every popped message as unacked in the same
atomic call, exactly as kombu's `QoS.append` would, so nothing is ever popped without being recorded. The
poller reads the reply like a `BRPOP` reply and the messages take kombu's usual delivery path (`QoS.append`
skips the Redis writes the script already made). Only an empty reply sends the `BRPOP`, which waits as
before: an idle consumer does not spin, and a lone message is delivered as fast as before. Acks are
deferred and sent together (one `ZREM` and one `HDEL` for all tags) at the next poll, `basic_get`,
restore or close: an ack is only ever later, never earlier; a crash before the flush means a redelivery,
which decortask's receipt rules skip. Rejects and requeues stay immediate. With a `global_keyprefix`,
`ack_emulation` off or a `no_ack` consumer, the channel consumes exactly as kombu does.

Everything here leans on kombu's private Redis internals (`Channel._brpop_start` and `_brpop_read`,
`PublishBatch`, `QoS.append`, ...), some new in kombu 5.7. tests/test_kombu_contract.py lists each one with
the shape relied upon and names it when a kombu release changes it: run it before moving the kombu pin.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from queue import Empty
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.scheduling import round_robin_cycle

from ..message import CONTENT_ENCODING, CONTENT_TYPE

logger = logging.getLogger(__name__)

#: Seconds between two scans for unacked messages past the visibility timeout (see `QoS.restore_visible`).
RESTORE_SCAN_MIN_INTERVAL = 1.0
#: After a fetch found nothing, messages trickle in one at a time through BRPOP, exactly as with kombu (a
#: fetch after each would cost a round trip per message for nothing). A BRPOP answered within this many
#: seconds of being sent, or this many BRPOP deliveries in a row, mean a backlog: the next fetch is the script.
BACKLOG_BRPOP_SECONDS = 0.0005
BACKLOG_BRPOPS = 8
#: The most messages one fetch takes (also the batch size when the channel has no prefetch limit).
MAX_BATCH = 100

#: KEYS: unacked hash, unacked index, then the lists to pop, grouped by priority step (highest first), each
#: group holding the queues in cycle order. ARGV: most messages to pop, the time to record them at (the
#: client's clock, as kombu's QoS.append and restore_visible use), the number of queues, 1 to rotate the
#: queue cycle after each message (kombu's round robin) or 0, then the delivery tags acked since the last
#: fetch, removed from the unacked hash and index first (kombu's QoS.ack, carried by the fetch).
#: Returns (queue index, payload, recorded) per message. A payload is recorded as kombu's QoS.append
#: records it: HSET tag -> [payload, exchange, routing_key] (the payload's own bytes, never re-encoded:
#: cjson would change numbers and empty arrays) and ZADD now tag. One without a string delivery tag or
#: exchange/routing key is not recorded (recorded = 0): kombu's QoS.append then does what it does after a
#: BRPOP. A script runs atomically, so no message is ever popped and not recorded, even on a crash.
FETCH_SCRIPT = """
local limit = tonumber(ARGV[1])
local now = ARGV[2]
local nqueues = tonumber(ARGV[3])
local rotate = ARGV[4] == '1'
for i = 5, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local nsteps = (#KEYS - 2) / nqueues
local order = {}
for i = 1, nqueues do order[i] = i end
local empty = {}
local out = {}
local taken = 0
while taken < limit do
  local found = false
  for step = 0, nsteps - 1 do
    for pos = 1, nqueues do
      local queue = order[pos]
      local key = 2 + step * nqueues + queue
      if not empty[key] then
        local item = redis.call('RPOP', KEYS[key])
        if item then
          local recorded = 0
          local ok, message = pcall(cjson.decode, item)
          if ok and type(message) == 'table' and type(message['properties']) == 'table' then
            local props = message['properties']
            local info = props['delivery_info']
            local tag = props['delivery_tag']
            if type(tag) == 'string' and type(info) == 'table' and type(info['exchange']) == 'string'
                and type(info['routing_key']) == 'string' then
              redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
                .. cjson.encode(info['routing_key']) .. ']')
              redis.call('ZADD', KEYS[2], now, tag)
              recorded = 1
            end
          end
          out[#out + 1] = queue - 1
          out[#out + 1] = item
          out[#out + 1] = recorded
          if rotate then
            table.remove(order, pos)
            order[#order + 1] = queue
          end
          taken = taken + 1
          found = true
          break
        end
        empty[key] = true
      end
    end
    if found then break end
  end
  if not found then break end
end
return out
"""


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


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's Redis ack emulation, with deferred batched acks and no second write for fetched batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Acked tags whose unacked entries are not yet removed from Redis (see `flush_acks`).
        self.pending_acks: list[Any] = []
        #: Tags the fetch script already recorded as unacked: `append` must not write them again.
        self.recorded: set[Any] = set()
        #: The first scan waits a full interval too: kombu's scan mutex is shared by every consumer and a
        #: consumer killed inside a scan leaves it held for `unacked_mutex_expire` (5 min), and crash tests
        #: kill workers right after they start.
        self._scanned_at = time.monotonic()

    def append(self, message: Any, delivery_tag: Any) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        if self.channel.closed:
            # Nothing would flush it any more (a delivery settled after its connection was replaced).
            super().ack(delivery_tag)
            return
        # Only the Redis bookkeeping waits; the prefetch window frees at once, as kombu's ack does.
        self.pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def flush_acks(self, client: Any = None) -> None:
        """Remove every acked tag from the unacked hash and index in one round trip."""
        tags, self.pending_acks = self.pending_acks, []
        if not tags:
            return
        try:
            with self.pipe_or_acquire(client=client) as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except BaseException:
            self.pending_acks[:0] = tags  # tried again at the next flush; until then only later, never lost
            raise

    def restore_unacked(self, client: Any = None) -> Any:
        # Settle the acks first: what was acked stays acked and is never put back in a queue.
        self.flush_acks(client)
        return super().restore_unacked(client)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        # kombu scans on every `interval`-th poll that found nothing (three round trips: mutex, range,
        # release), which it expects about once per BRPOP timeout when idle. A fetch is answered on a later
        # poll, so under load most polls find nothing yet: a time floor keeps the scans as rare as kombu's.
        will_scan = self._vrestore_count % (interval or 1) == 0
        if will_scan and time.monotonic() - self._scanned_at < RESTORE_SCAN_MIN_INTERVAL:
            return None
        if will_scan:
            self._scanned_at = time.monotonic()
            self.flush_acks()  # the scan restores entries older than the visibility timeout: never an acked one
        return super().restore_visible(start, num, interval)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel: one reused redis-py client, batched fetches and batched acks."""

    QoS = QoS
    _reused_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tag_prefix = uuid.uuid4().hex + "."
        self._tag_count = itertools.count(1)
        #: Queues with a no_ack consumer: nobody would ack what the script records, so kombu's path serves.
        self._no_ack_queues: set[str] = set()
        #: The fetch script's SHA once loaded; the queues (in cycle order) of a fetch awaiting its reply.
        self._fetch_sha: str | None = None
        self._fetch_sent: list[str] | None = None
        #: The acks that fetch carries, until its reply shows they were applied.
        self._fetch_acks: list[Any] = []
        #: Per queue order: the script's key count and keys (unacked hash and index, then every list).
        self._fetch_keys: dict[tuple[str, ...], list[Any]] = {}
        #: Whether the last fetch found nothing (BRPOP fetches until a backlog shows), and the BRPOP
        #: deliveries since.
        self._trickle = False
        self._brpops = 0
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

    def push_many(
        self, items: Sequence[tuple[bytes, str, int, dict[str, Any] | None]], delivery_mode: int
    ) -> bool:
        """Push (JSON body, queue, priority, headers) items as kombu's `Producer.publish` would, in one round trip.

        The message kombu builds for a body already encoded as JSON is written directly: the same envelope
        (base64 body, content type and encoding, headers, delivery mode, priority, delivery info and tag),
        on the same priority list, one `LPUSH` per list. kombu's layers in between cost more than the
        push itself. False, and nothing sent, for a queue with an expiry (kombu's own path refreshes it).
        """
        if self._expires and any(queue in self._expires for _, queue, _, _ in items):
            return False
        lists: dict[str, list[str]] = {}
        for body, queue, priority, headers in items:
            message = {
                "body": base64.b64encode(body).decode("ascii"),
                "content-encoding": CONTENT_ENCODING,
                "content-type": CONTENT_TYPE,
                "headers": headers or {},
                "properties": {
                    "delivery_mode": delivery_mode,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": priority,
                    "body_encoding": "base64",
                    "delivery_tag": self._next_delivery_tag(),
                },
            }
            key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
            lists.setdefault(key, []).append(dumps(message))
        with self.conn_or_acquire() as client:
            if len(lists) == 1:
                ((key, values),) = lists.items()
                client.lpush(key, *values)
            else:
                with client.pipeline(transaction=False) as pipe:
                    for key, values in lists.items():
                        pipe.lpush(key, *values)
                    pipe.execute()
        return True

    # -- consuming -----------------------------------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("no_ack", args[0] if args else False):
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue not in self._tag_to_queue.values():
            self._no_ack_queues.discard(queue)
        return ret

    def basic_get(self, *args: Any, **kwargs: Any) -> Any:
        self.flush_acks()
        return super().basic_get(*args, **kwargs)

    def flush_acks(self) -> None:
        flush = getattr(self.qos, "flush_acks", None)  # kombu's plain QoS when ack_emulation is off
        if flush is not None:
            flush()

    def flush_acks_unless_fetching(self) -> None:
        """Before a poll: send the pending acks now, unless this poll sends a fetch, which carries them."""
        qos = self.qos
        if not getattr(qos, "pending_acks", None):
            return
        if (
            self._in_poll
            or self._trickle
            or not qos.can_consume()
            or not self._fetch_in_batches(self.active_queues)
        ):
            qos.flush_acks()

    def _fetch_in_batches(self, queues: list[str]) -> bool:
        """Whether a fetch from `queues` may be the script; otherwise kombu's BRPOP path consumes, unchanged."""
        return bool(
            queues
            and self.ack_emulation
            and not self.global_keyprefix
            and not self._closing
            and not (self._no_ack_queues and self._no_ack_queues.intersection(queues))
        )

    def _brpop_start(self, timeout: float | None = None) -> None:
        # kombu's poller calls this to ask for messages when the channel has prefetch room and nothing is
        # outstanding. The script is sent instead of the BRPOP, without waiting, on the same connection
        # and under the same registration, so kombu's poller reads its reply like a BRPOP reply: pausing it
        # while the window is full, dropping it with the connection, reading it on close. Only an empty
        # reply sends the BRPOP, which then waits for the next message exactly as in kombu.
        self._fetch_sent = None
        queues = self._queue_cycle.consume(len(self.active_queues))
        if self._trickle or not self._fetch_in_batches(queues):
            super()._brpop_start(timeout)
            return
        room = self.qos.can_consume_max_estimate()
        limit = MAX_BATCH if room is None else min(room, MAX_BATCH)
        if limit <= 0:
            super()._brpop_start(timeout)
            return
        if self._fetch_sha is None:
            with self.conn_or_acquire() as client:  # the script cache is the server's: any connection
                self._fetch_sha = client.script_load(FETCH_SCRIPT)
        order = tuple(queues)
        keys = self._fetch_keys.get(order)
        if keys is None:  # built once per queue order: this runs for every fetch
            keys = [self.unacked_key, self.unacked_index_key]
            keys += [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
            keys = self._fetch_keys[order] = [len(keys), *keys]
        rotate = 1 if type(self._queue_cycle).rotate is round_robin_cycle.rotate else 0
        # The acks settled since the last poll travel with the fetch instead of a round trip of their own.
        acks, self.qos.pending_acks = self.qos.pending_acks, []
        args = [limit, repr(time.time()), len(queues), rotate, *acks]
        connection = self.client.connection
        try:
            connection.send_command("EVALSHA", self._fetch_sha, *keys, *args)
        except BaseException:
            self.qos.pending_acks[:0] = acks
            raise
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        self._fetch_sent, self._fetch_acks = queues, acks

    def _brpop_read(self, **options: Any) -> Any:
        queues = self._fetch_sent
        if queues is None:
            waited = time.monotonic() - (self._brpop_sent_at or 0.0)
            delivered = super()._brpop_read(**options)  # raises Empty when the BRPOP timed out
            self._brpops += 1
            if waited < BACKLOG_BRPOP_SECONDS or self._brpops >= BACKLOG_BRPOPS:
                self._trickle = False
            return delivered
        self._fetch_sent = None
        acks, self._fetch_acks = self._fetch_acks, []
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except BaseException as exc:
                # The acks it carried may not have been applied: send them again (removing twice is harmless).
                self.qos.pending_acks[:0] = acks
                if isinstance(exc, self.connection_errors):
                    self.client.connection.disconnect()  # as kombu does: the next poll reconnects
                    raise
                if type(exc).__name__ != "NoScriptError" and "NOSCRIPT" not in str(exc):
                    raise
                self._fetch_sha = None  # the server lost its script cache (restart, SCRIPT FLUSH): load again
                raise Empty() from None
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if not reply:
            self._trickle, self._brpops = True, 0
            if not self._closing and self.qos.can_consume():
                # Nothing is waiting: BRPOP now, so the wait for the next message starts without a poll
                # cycle's delay and a lone message arrives as fast as with kombu alone.
                super()._brpop_start()
            raise Empty()
        self._deliver_fetched(queues, reply)
        return True

    def _deliver_fetched(self, queues: list[str], reply: list[Any]) -> None:
        fetched = [(queues[int(reply[i])], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]
        delivered = 0
        try:
            for queue, item, recorded in fetched:
                payload = loads(bytes_to_str(item))
                tag = payload["properties"]["delivery_tag"] if recorded else None
                if recorded:
                    self.qos.recorded.add(tag)
                self._queue_cycle.rotate(queue)  # as after each BRPOP (a no-op for non round-robin cycles)
                self.connection._deliver(payload, queue)
                delivered += 1
                # Normally consumed by append; a stale tag must never skip the bookkeeping of a later BRPOP.
                self.qos.recorded.discard(tag)
        except BaseException:
            # The message whose delivery failed (kombu could not even build it, say) stays in the unacked
            # hash: restored after the visibility timeout, where kombu's BRPOP path would have lost it, and
            # never put straight back at the head, where it would fail again at once. The ones after it
            # never reached anyone: they go back at once, in order.
            with contextlib.suppress(Exception):
                self.qos.recorded.discard(
                    loads(bytes_to_str(fetched[delivered][1]))["properties"]["delivery_tag"]
                )
            self._give_back(fetched[delivered + 1 :])
            raise

    def _give_back(self, undelivered: list[tuple[str, Any, Any]]) -> None:
        """Put popped messages that never reached a consumer back at the head of their queues, in order."""
        for _, item, recorded in reversed(undelivered):
            if not recorded:
                continue  # not in Redis any more, as after kombu's own BRPOP; nothing to restore from
            with contextlib.suppress(Exception):
                tag = loads(bytes_to_str(item))["properties"]["delivery_tag"]
                self.qos.recorded.discard(tag)
                if tag not in self.qos._delivered:
                    self.qos.restore_by_tag(tag)

    def close(self) -> None:
        if not self.closed:
            try:
                self.flush_acks()  # before kombu's close restores what is unacked
            except Exception as exc:
                # Those messages stay in the unacked hash: redelivered after the visibility timeout.
                logger.warning("could not send deferred acks while closing (%s)", type(exc).__name__)
        super().close()


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with decortask's channel; acks pending on its channels go out at each poll."""

    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        for channel in self.channels:
            if isinstance(channel, Channel):
                channel.flush_acks_unless_fetching()
        return super().drain_events(connection, timeout)


def redis_connection(url: str, **options: Any) -> kombu.Connection:
    """A kombu connection to `url` (redis:// or rediss://) that uses this module's transport.

    kombu reads the URL (host, credentials, database, TLS options) as for its own transport; only the class
    that builds the channels is swapped.
    """
    conn = kombu.Connection(url, **options)
    conn.transport_cls = Transport
    return conn
