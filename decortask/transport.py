"""The only module that imports kombu: connections, queues, publishing and consuming.

Everything publishes to the default exchange with the queue name as routing key: on Redis that skips a
binding lookup per message (KOMBU-NOTES), and on every broker the queue is declared before the first
publish so nothing is dropped for want of a queue.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kombu
from kombu import Exchange, Queue

from .config import Settings, sqlite_path
from .errors import BrokerUnavailable, ConfigurationError
from .message import CONTENT_ENCODING, CONTENT_TYPE
from .security import mask_text, mask_url
from .transports.guard import guard_channel
from .transports.memory import restoring_memory_transport

logger = logging.getLogger("decortask.transport")

DEFAULT_EXCHANGE = Exchange("")
MAX_PRIORITY = 9
DEAD_LETTER_SUFFIX = ".dlq"
#: A consumer that lost its broker tries again after this pause, doubled after each failure up to the max.
RECONNECT_FIRST_PAUSE = 0.5
RECONNECT_MAX_PAUSE = 10.0
_SCHEMES = {"amqp", "amqps", "pyamqp", "redis", "rediss", "memory", "sqlite"}
#: Errors that mean "the broker is not there right now" across kombu's transports.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, socket.timeout)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


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


class BrokerTransport:
    """One broker URL: builds kombu connections, publishes, and opens consumer sessions."""

    def __init__(self, url: str, settings: Settings) -> None:
        scheme = scheme_of(url)
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unknown broker URL {mask_url(url)!r}: use amqp://user:pass@host:5672//, "
                "redis://host:6379/0, sqlite:///path.db or memory://"
            )
        self.url = url
        self.url_masked = mask_url(url)
        self.scheme = scheme
        self.settings = settings
        self._local = threading.local()
        self._queues: dict[str, Queue] = {}
        self._lock = threading.Lock()
        self._all_producers: list[kombu.Connection] = []
        if scheme == "sqlite":
            self._sqlite_path = str(sqlite_path(url))

    # -- connections ---------------------------------------------------------------------------------------

    def connection(self) -> kombu.Connection:
        """A new, not yet connected kombu connection for this broker."""
        if self.scheme == "sqlite":
            from .transports.sqlite import SQLiteTransport

            return kombu.Connection(
                transport=SQLiteTransport,
                transport_options={
                    "path": self._sqlite_path,
                    "lease_seconds": self.settings.sqlite_lease,
                    "polling_interval": 0.02,
                },
            )
        if self.scheme == "memory":
            return kombu.Connection(transport=restoring_memory_transport())
        options: dict[str, Any] = {}
        if self.scheme in ("amqp", "amqps", "pyamqp"):
            options["confirm_publish"] = True
        if self.scheme in ("redis", "rediss"):
            options["visibility_timeout"] = self.settings.redis_visibility_timeout
        return kombu.Connection(self.url, transport_options=options, connect_timeout=5)

    def _connect(self, conn: kombu.Connection, retries: int) -> None:
        def log_retry(exc: BaseException, interval: float) -> None:
            logger.warning(
                "broker %s unreachable (%s); retrying in %.1f s",
                self.url_masked,
                mask_text(str(exc)),
                interval,
            )

        try:
            conn.ensure_connection(
                max_retries=retries,
                interval_start=0.2,
                interval_step=0.5,
                interval_max=2.0,
                errback=log_retry,
            )
        except Exception as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {self.url_masked} ({mask_text(str(exc))}); "
                "check that it is running and that the URL and credentials are right"
            ) from None

    def check(self) -> None:
        """Connect once (with the publish retry budget) to fail fast on a wrong URL or a stopped broker."""
        conn = self.connection()
        try:
            self._connect(conn, self.settings.publish_retries)
        finally:
            conn.release()

    # -- queues --------------------------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        """The durable queue `name` on the default exchange (with priorities where the broker has them)."""
        found = self._queues.get(name)
        if found is None:
            arguments = (
                {"x-max-priority": MAX_PRIORITY} if self.scheme in ("amqp", "amqps", "pyamqp") else None
            )
            found = Queue(
                name,
                DEFAULT_EXCHANGE,
                routing_key=name,
                durable=True,
                auto_delete=False,
                queue_arguments=arguments,
            )
            self._queues[name] = found
        return found

    def broker_priority(self, priority: int) -> int:
        """decortask priority (0..9, higher sooner) as this broker reads it (Redis: lower is sooner)."""
        if self.scheme in ("redis", "rediss"):
            return MAX_PRIORITY - priority
        return priority

    # -- publishing ----------------------------------------------------------------------------------------

    def _producer(self) -> tuple[kombu.Connection, kombu.Producer, set[str]]:
        state = getattr(self._local, "producer", None)
        if state is None:
            conn = self.connection()
            self._connect(conn, self.settings.publish_retries)
            producer = kombu.Producer(conn.default_channel, exchange=DEFAULT_EXCHANGE)
            state = (conn, producer, set())
            self._local.producer = state
            with self._lock:
                self._all_producers.append(conn)
        return state

    def _drop_producer(self) -> None:
        """Forget this thread's producer after a failure, closing it without a word to the broker."""
        state = getattr(self._local, "producer", None)
        self._local.producer = None
        if state is not None:
            self.abort(state[0])
            with self._lock:
                if state[0] in self._all_producers:
                    self._all_producers.remove(state[0])

    def _is_amqp(self) -> bool:
        return self.scheme in ("amqp", "amqps", "pyamqp")

    def abort(self, conn: kombu.Connection) -> None:
        """Close a connection that failed, at once and without the close handshake.

        A graceful AMQP close waits for the broker's Close-Ok with no time limit, and a broker that blocks
        publishers (memory or disk alarm) stops reading the socket, so it never answers: `.delay()` would hang
        for as long as the alarm lasts. The socket is reset instead (SO_LINGER 0): a publish the broker was
        still holding back unread is discarded with the connection, rather than queued once the alarm
        clears, after `.delay()` already reported that it failed. Other transports close as usual.
        """
        if self._is_amqp():
            raw = getattr(conn, "_connection", None)  # the py-amqp connection, if it was ever opened
            # `_transport`, not `transport`: py-amqp's property connects again when the socket is gone.
            sock = getattr(getattr(raw, "_transport", None), "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
            collect = getattr(raw, "collect", None)
            if callable(collect):
                with contextlib.suppress(Exception):  # tears down py-amqp's state without any network I/O
                    collect()
        with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone anyway
            conn.release()

    def publish(
        self,
        body: bytes,
        queue: str,
        *,
        priority: int = 0,
        persistent: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish one JSON body to `queue` (declared first); on AMQP waits for the broker's confirm.

        Raises:
            BrokerUnavailable: the broker could not take the message within the retry budget.
        """
        self.publish_many([(body, queue, priority, headers)], persistent=persistent)

    def publish_many(
        self,
        items: Iterable[tuple[bytes, str, int, dict[str, Any] | None]],
        *,
        persistent: bool = True,
    ) -> None:
        """Publish (body, queue, priority, headers) items over one connection, retrying the rest on failure."""
        pending = list(items)
        attempts = 0
        while pending:
            try:
                _conn, producer, declared = self._producer()
                while pending:
                    body, queue, priority, headers = pending[0]
                    if queue not in declared:
                        self.queue(queue)(producer.channel).declare()
                        declared.add(queue)
                    producer.publish(
                        body,
                        routing_key=queue,
                        content_type=CONTENT_TYPE,
                        content_encoding=CONTENT_ENCODING,
                        delivery_mode=2 if persistent else 1,
                        priority=self.broker_priority(priority),
                        headers=headers or {},
                        retry=False,
                        timeout=self.settings.confirm_timeout,
                    )
                    pending.pop(0)
            except BrokerUnavailable:
                raise
            except Exception as exc:
                self._drop_producer()
                if self._is_amqp() and isinstance(exc, (socket.timeout, TimeoutError)):
                    # The broker took the connection but did not confirm in time: retrying would wait as
                    # long again (a broker blocking publishers blocks every new connection as well), so the
                    # caller hears about it now. The reset connection took the unconfirmed message with it.
                    raise BrokerUnavailable(
                        f"the broker at {self.url_masked} did not confirm a publish within "
                        f"confirm_timeout={self.settings.confirm_timeout:g} s; it may be blocking publishers "
                        "(a memory or disk alarm: see its log and `rabbitmqctl status`), or be overloaded"
                    ) from None
                attempts += 1
                if attempts > self.settings.publish_retries or not _is_connection_error(exc):
                    raise BrokerUnavailable(
                        f"publishing to {self.url_masked} failed ({type(exc).__name__}: {mask_text(str(exc))}); "
                        "check that the broker is running and reachable"
                    ) from None
                logger.warning("publish to %s failed (%s); retrying", self.url_masked, type(exc).__name__)
                time.sleep(min(0.2 * attempts, 1.0))

    def dead_letter(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Publish the original body to `<queue>.dlq` with a reason header (before the original is acked)."""
        headers = dict(delivery.headers)
        headers.update(
            {
                "x-decortask-reason": reason,
                "x-decortask-detail": mask_text(detail)[:500],
                "x-decortask-original-queue": delivery.queue,
                "x-decortask-original-content-type": delivery.content_type or "",
                "x-decortask-dead-lettered-at": time.time(),
            }
        )
        # The body is kept byte for byte; it travels as an opaque payload, never deserialized again.
        self.publish_many([(delivery.body, delivery.queue + DEAD_LETTER_SUFFIX, 0, headers)])

    # -- consuming -----------------------------------------------------------------------------------------

    def open_consumer(self, queues: Iterable[str], prefetch: int, consume: bool = True) -> ConsumerSession:
        """A consumer connection on `queues`; with `consume=False` only `get()` fetches messages."""
        return ConsumerSession(self, list(queues), prefetch, consume)

    @contextlib.contextmanager
    def _admin_channel(self) -> Iterator[Any]:
        """A channel on a short-lived connection, for queue administration off the hot path."""
        conn = self.connection()
        try:
            self._connect(conn, 1)
            yield conn.default_channel
        finally:
            conn.release()

    def queue_size(self, name: str) -> int:
        """Ready messages in `name` (0 if the queue does not exist yet)."""
        with self._admin_channel() as channel:
            try:
                result = self.queue(name)(channel).queue_declare(passive=True)
            except Exception:  # not declared yet: nothing is waiting in it
                return 0
            return int(result.message_count)

    def purge(self, name: str) -> int:
        """Delete the ready messages of `name`; returns how many."""
        with self._admin_channel() as channel:
            bound = self.queue(name)(channel)
            bound.declare()
            return int(bound.purge() or 0)

    def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages (tests and `decortask purge --delete`)."""
        with self._admin_channel() as channel, contextlib.suppress(Exception):  # already gone
            self.queue(name)(channel).delete()

    def close(self) -> None:
        with self._lock:
            producers, self._all_producers = self._all_producers, []
        for conn in producers:
            with contextlib.suppress(Exception):
                conn.release()
        self._local = threading.local()


class ConsumerSession:
    """One consumer connection, used only by the thread that opened it (kombu channels are not thread-safe)."""

    def __init__(
        self, transport: BrokerTransport, queues: list[str], prefetch: int, consume: bool = True
    ) -> None:
        self.transport = transport
        self.consume = consume
        self.queues = queues
        self.prefetch = prefetch
        self._inbox: list[Delivery] = []
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
            self.transport._connect(
                conn, retries if retries is not None else self.transport.settings.publish_retries
            )
            channel = conn.default_channel
            channel.basic_qos(
                0, self.prefetch, False
            )  # positional: py-amqp and kombu's virtual channels name them differently
            guard_channel(channel)
            bound = [self.transport.queue(name)(channel) for name in self.queues]
            for queue in bound:
                queue.declare()
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
        except BaseException:
            # Half set up (the broker went away again, or is still starting): never leave it open.
            self._consumer = self._conn = None
            self.transport.abort(conn)
            raise

    def _on_decode_error(self, message: Any, exc: BaseException) -> None:
        # kombu could not even build the message; it is refused as undecodable, never retried.
        self._on_message(message)
        self._inbox[-1].refused = "decode_error"
        self._inbox[-1].refused_detail = f"the transport could not read the message ({type(exc).__name__})"

    def _on_message(self, message: Any) -> None:
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
        try:
            self._conn.drain_events(timeout=timeout)
            # Take whatever else is already buffered without waiting again.
            while len(self._inbox) < self.prefetch:
                self._conn.drain_events(timeout=0)
        except TimeoutError:
            pass
        inbox, self._inbox = self._inbox, []
        return inbox

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
        delivery.raw.ack()

    def requeue(self, delivery: Delivery) -> None:
        """Give an unstarted delivery back to the broker (nothing to do if its connection was lost since)."""
        if delivery.connection is not None and delivery.connection is not self._conn:
            return  # the broker took it back when that connection went away
        delivery.raw.requeue()

    @property
    def connection_errors(self) -> tuple[type[BaseException], ...]:
        conn = self._conn or self.transport.connection()
        return tuple(conn.connection_errors) + tuple(conn.channel_errors) + _CONNECTION_ERRORS

    def close(self, abort: bool = False) -> None:
        """Close the connection; with `abort` (after it failed), at once and without talking to the broker.

        Unacked deliveries go back to the broker either way (RabbitMQ requeues them when the connection
        closes; kombu's Redis channel restores them while it closes).
        """
        consumer, conn = self._consumer, self._conn
        self._consumer = self._conn = None
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


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    name = type(exc).__name__
    return any(
        word in name for word in ("Connection", "Channel", "Recoverable", "Timeout", "OperationalError")
    )
