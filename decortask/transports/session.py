"""A consumer connection and the messages it receives (kombu channels belong to the thread that opened them).

Below `transport.py`, which re-exports it: a session uses the broker through `Broker`, the transport's
public connect/abort pair and queue declarations, and never imports `transport.py`.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import kombu

from ..message import CONTENT_ENCODING, CONTENT_TYPE
from .amqp import input_waiting
from .broadcast import control_queue, decode_cancel
from .guard import guard_channel

#: A consumer that lost its broker tries again after this pause, doubled after each failure up to the max.
RECONNECT_FIRST_PAUSE = 0.5
RECONNECT_MAX_PAUSE = 10.0
#: Brokers whose acks a consuming session holds until `send_acks`, then sends as few frames as it can.
BATCHED_ACK_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
#: Errors that mean "the broker is not there right now" across kombu's transports.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, socket.timeout)


class Broker(Protocol):
    """What a session needs of its transport (`transport.BrokerTransport`)."""

    @property
    def scheme(self) -> str: ...

    @property
    def broadcasts(self) -> bool: ...

    def connection(self) -> kombu.Connection:
        """A new, not yet connected connection."""
        ...

    def connect(self, conn: kombu.Connection, retries: int | None = None) -> None:
        """Connect `conn` (default retries: the `publish_retries` setting); raises BrokerUnavailable."""
        ...

    def abort(self, conn: kombu.Connection) -> None:
        """Drop a failed connection at once, without the close handshake."""
        ...

    def queue(self, name: str) -> kombu.Queue: ...

    def declare_queue(self, name: str, channel: Any) -> Any: ...


@dataclass
class Delivery:
    """A received message, before decoding. `raw` is kombu's message, used only to settle it."""

    body: bytes
    content_type: str | None
    headers: dict[str, Any]
    queue: str
    redelivered: bool
    raw: Any
    #: Set when the transport refused the message before decortask could read it (dead-letter reason).
    refused: str | None = None
    refused_detail: str = ""
    #: The kombu connection it arrived on: once that is lost, the broker has the message back.
    connection: Any = field(default=None, repr=False, compare=False)


class ConsumerSession:
    """One consumer connection, used only by the thread that opened it (kombu channels are not thread-safe)."""

    def __init__(
        self,
        transport: Broker,
        queues: list[str],
        prefetch: int,
        consume: bool = True,
        *,
        on_cancel: Callable[[str], None] | None = None,
        consumer_id: str = "",
    ) -> None:
        self.transport = transport
        self.consume = consume
        self.on_cancel = on_cancel
        self.consumer_id = consumer_id or f"{socket.gethostname()}.{id(self):x}"
        self.queues = queues
        self.prefetch = prefetch
        self._inbox: list[Delivery] = []
        #: AMQP: delivery tags not yet settled, in the order received (the channel numbers them upwards),
        #: and the messages settled as acked but not yet acked on the wire (see `send_acks`).
        self._batch_acks = consume and transport.scheme in BATCHED_ACK_SCHEMES
        self._unsettled: deque[int] = deque()
        self._held_acks: dict[int, Any] = {}
        self._conn: kombu.Connection | None = None
        self._consumer: kombu.Consumer | None = None
        #: While the connection is lost: when it was lost (monotonic), the attempts since, and the backoff.
        self.lost_at: float | None = None
        self.reconnect_attempts = 0
        self.pause = RECONNECT_FIRST_PAUSE
        self._retry_at = 0.0
        self.connect()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def lost(self) -> None:
        """The connection failed: drop it at once and start the reconnect backoff.

        Its unacked deliveries are the broker's again (RabbitMQ requeues them as the connection closes,
        kombu's Redis channel restores them if Redis is still there, a lease on the SQLite broker runs out).
        """
        self.close(abort=True)
        if self.lost_at is None:
            self.lost_at = self._retry_at = time.monotonic()
            self.reconnect_attempts = 0
            self.pause = RECONNECT_FIRST_PAUSE

    def reconnect_due(self) -> bool:
        """Whether the backoff allows the next reconnect attempt now."""
        return time.monotonic() >= self._retry_at

    def reconnect(self) -> float:
        """One reconnect attempt; returns how long the session was without a connection.

        Raises:
            BrokerUnavailable, or any of `connection_errors`: this attempt failed; the next one is due
            `pause` seconds from now (0.5 s at first, doubled after each failure up to 10 s).
        """
        self.reconnect_attempts += 1
        try:
            self.connect(retries=0)
        except BaseException:
            self.pause = (
                self.pause if self.reconnect_attempts == 1 else min(self.pause * 2, RECONNECT_MAX_PAUSE)
            )
            self._retry_at = time.monotonic() + self.pause
            raise
        down = time.monotonic() - (self.lost_at if self.lost_at is not None else time.monotonic())
        self.lost_at = None
        return down

    def connect(self, retries: int | None = None) -> None:
        """(Re)connect, declare the queues and start consuming; a previous connection is dropped first.

        Raises:
            BrokerUnavailable: the broker could not be reached within `retries`.
            Any of `connection_errors`: the broker went away again while the session was being set up.
        """
        self.close(abort=True)
        conn = self.transport.connection()
        try:
            self.transport.connect(conn, retries)
            channel = conn.default_channel
            channel.basic_qos(
                0, self.prefetch, False
            )  # positional: py-amqp and kombu's virtual channels name them differently
            guard_channel(channel)
            bound = [self.transport.declare_queue(name, channel) for name in self.queues]
            self._conn = conn
            if self.consume:
                # on_message, not callbacks: kombu then hands over the raw message without deserializing
                # it (callbacks would decode every body first, and would unpickle a pickle body). Bodies
                # are decoded only by decortask.message.decode, which accepts JSON alone.
                consumer = kombu.Consumer(
                    channel,
                    queues=bound,
                    on_message=self._on_message,
                    on_decode_error=self._on_decode_error,
                    no_ack=False,
                    accept=[CONTENT_TYPE],
                )
                consumer.consume()
                self._consumer = consumer
                if self.on_cancel is not None and self.transport.broadcasts:
                    self._listen_for_control(conn)
        except BaseException:
            # Half set up (the broker went away again, or is still starting): never leave it open.
            self._consumer = self._conn = None
            self.transport.abort(conn)
            raise

    def _listen_for_control(self, conn: kombu.Connection) -> None:
        # Its own channel: control messages are never acked and never count against the task prefetch.
        channel = conn.channel()
        # A fresh name per connection: an exclusive queue of a half-open connection the broker has not yet
        # noticed is dead would otherwise refuse the new declaration (RESOURCE_LOCKED) and block reconnects.
        name = f"{self.consumer_id}.{uuid.uuid4().hex[:8]}"
        queue = control_queue(self.transport.scheme, name)(channel)
        queue.declare()
        kombu.Consumer(
            channel, queues=[queue], on_message=self._on_control, no_ack=True, accept=[CONTENT_TYPE]
        ).consume()

    def _on_control(self, message: Any) -> None:
        task_id = decode_cancel(message.body)
        if task_id is not None and self.on_cancel is not None:
            self.on_cancel(task_id)

    def _on_decode_error(self, message: Any, exc: BaseException) -> None:
        # kombu could not even build the message; it is refused as undecodable, never retried.
        self._on_message(message)
        self._inbox[-1].refused = "decode_error"
        self._inbox[-1].refused_detail = f"the transport could not read the message ({type(exc).__name__})"

    def _on_message(self, message: Any) -> None:
        if self._batch_acks:
            self._unsettled.append(message.delivery_tag)
        info = message.delivery_info or {}
        raw_body = message.body
        if isinstance(raw_body, str):
            raw_body = raw_body.encode(CONTENT_ENCODING)
        self._inbox.append(
            Delivery(
                body=raw_body,
                content_type=message.content_type,
                headers=dict(message.headers or {}),
                queue=info.get("routing_key") or self.queues[0],
                redelivered=bool(info.get("redelivered", False)),
                raw=message,
                connection=self._conn,
            )
        )
        compression = getattr(message, "refused_compression", None)
        if compression is not None:
            self._inbox[-1].refused = "compression_not_allowed"
            self._inbox[
                -1
            ].refused_detail = f"compressed bodies ({compression!r}) are never expanded: a small body could unpack to gigabytes"
            self._inbox[-1].headers["x-decortask-original-compression"] = compression

    def drain(self, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` seconds for deliveries; returns what arrived (possibly nothing)."""
        assert self._conn is not None, "consumer is closed"
        self.send_acks()  # they free the prefetch window this poll is waiting on
        try:
            self._conn.drain_events(timeout=timeout)
            # Take whatever else is already buffered without waiting again (on AMQP, asking first whether
            # anything is: a read that finds nothing costs a raised timeout).
            waiting = input_waiting(self._conn)
            while len(self._inbox) < self.prefetch and (waiting is None or waiting()):
                self._conn.drain_events(timeout=0)
        except TimeoutError:
            pass
        inbox, self._inbox = self._inbox, []
        return inbox

    def flush_acks(self) -> None:
        """Send every ack held back: this session's (`send_acks`) and those the transport deferred to its
        next poll (Redis, the SQLite broker).

        While a worker shuts down it settles outcomes without polling, so nothing else would carry them
        before the connection closes.
        """
        self.send_acks()
        if self._conn is not None:
            flush = getattr(self._conn.default_channel, "flush_acks", None)
            if flush is not None:
                flush()

    def cancel(self) -> None:
        """Stop receiving new deliveries but keep the channel, so running tasks can still be acked."""
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # a dead channel has nothing left to cancel
                self._consumer.cancel()

    def get(self, queue: str) -> Delivery | None:
        """Fetch one ready message from `queue` without a consumer (the synchronous test driver)."""
        assert self._conn is not None, "session is closed"
        guard_channel(self._conn.default_channel)
        bound = self.transport.queue(queue)(self._conn.default_channel)
        message = bound.get(no_ack=False, accept=[CONTENT_TYPE])
        if message is None:
            return None
        self._on_message(message)
        return self._inbox.pop()

    def ack(self, delivery: Delivery) -> None:
        """Ack `delivery`; on AMQP held until `send_acks` (the worker sends them once per settling round)."""
        if self._batch_acks and delivery.connection is self._conn:
            self._held_acks[delivery.raw.delivery_tag] = delivery.raw
            return
        delivery.raw.ack()

    def send_acks(self) -> None:
        """Send the acks `ack` held: one `basic_ack(multiple=True)` for the longest run of settled tags
        from the oldest unsettled one, then one frame for each other held ack.

        A multiple ack covers every unsettled tag up to its own, so it is sent only as far as every tag up
        to it is acked (requeued ones are gone from the channel already). The others go at once as well:
        held back, they would keep the prefetch window full behind one long task.
        """
        held = self._held_acks
        if not held:
            return
        unsettled = self._unsettled
        last = None
        while unsettled and unsettled[0] in held:
            tag = unsettled.popleft()
            last = held.pop(tag)
        if last is not None:
            last.ack(multiple=True)
        for tag, raw in held.items():
            with contextlib.suppress(ValueError):
                unsettled.remove(tag)
            raw.ack()
        held.clear()

    def requeue(self, delivery: Delivery) -> None:
        """Give an unstarted delivery back to the broker (nothing to do if its connection was lost since)."""
        if delivery.connection is not None and delivery.connection is not self._conn:
            return  # the broker took it back when that connection went away
        delivery.raw.requeue()
        if self._batch_acks:
            with contextlib.suppress(ValueError):  # rejected: no longer the channel's to ack
                self._unsettled.remove(delivery.raw.delivery_tag)

    @property
    def connection_errors(self) -> tuple[type[BaseException], ...]:
        conn = self._conn or self.transport.connection()
        return tuple(conn.connection_errors) + tuple(conn.channel_errors) + CONNECTION_ERRORS

    def close(self, abort: bool = False) -> None:
        """Close the connection; with `abort` (after it failed), at once and without talking to the broker.

        Unacked deliveries go back to the broker either way (RabbitMQ requeues them when the connection
        closes; kombu's Redis channel restores them while it closes).
        """
        if not abort and self._conn is not None:
            with contextlib.suppress(Exception):  # a dead connection: the broker redelivers them
                self.send_acks()
        consumer, conn = self._consumer, self._conn
        self._consumer = self._conn = None
        self._unsettled.clear()
        self._held_acks.clear()
        if conn is None:
            return
        if abort:
            # A cancel or a close handshake on a half-dead connection waits for an answer that never comes.
            self.transport.abort(conn)
            return
        # Closing a dead connection may raise; it is closed all the same.
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.cancel()
        with contextlib.suppress(Exception):
            conn.release()
