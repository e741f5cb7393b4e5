"""With `transports/`, the only module that imports kombu: connections, queues, publishing and consuming.

`transports/session.py` (a consumer connection) sits below it and sees it as a `session.Broker`: the
public `connect`/`abort` pair and the queue declarations.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import kombu
from kombu import Exchange, Queue

from .config import AUTO_QUEUE_TYPE, Settings, sqlite_path
from .errors import BrokerUnavailable, ConfigurationError, QueueMismatch, missing_extra
from .liveness import LivenessProbe
from .message import CONTENT_ENCODING, CONTENT_TYPE
from .security import mask_text, mask_url
from .transports.broadcast import BROADCAST_SCHEMES, CONTROL_EXCHANGE, CONTROL_TTL_MS, encode_cancel
from .transports.confirms import confirm_tracker
from .transports.memory import restoring_memory_transport
from .transports.queues import (
    CLASSIC,
    DEAD_LETTER_SUFFIX,
    MAX_PRIORITY,
    QUORUM,
    QueueKind,
    Refusal,
    declared_arguments,
    fitting_type,
    mismatch_line,
    probe,
    quorum_priorities,
    refused,
    reply_of,
)
from .transports.session import CONNECTION_ERRORS, ConsumerSession, Delivery

# ConsumerSession and Delivery live in transports/session.py; this module stays the one to import from.
__all__ = ["DEAD_LETTER_SUFFIX", "BrokerTransport", "ConsumerSession", "Delivery", "scheme_of"]

logger = logging.getLogger("decortask.transport")

DEFAULT_EXCHANGE = Exchange("")
_SCHEMES = {"amqp", "amqps", "pyamqp", "redis", "rediss", "memory", "sqlite"}


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


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
        self._queues: dict[tuple[str, QueueKind], Queue] = {}
        #: AMQP: each queue's kind as last declared (`queue_type="auto"` ones are found out; see queues.py).
        self._kinds: dict[str, QueueKind] = {}
        #: The RabbitMQ version `check_queue` found ("" until then): quorum queues order by priority from 4.0.
        self._server_version = ""
        self._lock = threading.Lock()
        self._all_producers: list[kombu.Connection] = []
        #: Called before this process looks at or consumes a queue (`queue_size`, `purge`, `open_consumer`):
        #: the app flushes its background publisher there, so a process sees the messages it sent.
        self.before_inspect: Callable[[], None] | None = None
        self._checked_queues: set[str] = set()
        if scheme == "sqlite":
            self._sqlite_path = str(sqlite_path(url))

    # -- connections ---------------------------------------------------------------------------------------

    def connection(self) -> kombu.Connection:
        """A new, not yet connected kombu connection for this broker."""
        try:
            return self._connection()
        except TypeError as exc:  # kombu turns each ?name=value of the URL into a keyword argument
            if "unexpected keyword argument" not in str(exc):
                raise
            raise ConfigurationError(
                f"broker URL {self.url_masked!r}: an option in its query string is not one kombu knows ({exc}); "
                "remove it (namespace= and schema= are options of the store URL, not the broker's)"
            ) from None

    def _connection(self) -> kombu.Connection:
        if self.scheme == "sqlite":
            from .transports.sqlite import SQLiteTransport

            return kombu.Connection(
                transport=SQLiteTransport,
                transport_options={
                    "path": self._sqlite_path,
                    "lease_seconds": self.settings.sqlite_lease,
                    # Idle consumers wake on a commit to the file (SQLiteTransport.drain_events); this
                    # only bounds each wait, and the worker's drain timeouts are shorter still.
                    "polling_interval": 0.5,
                },
            )
        if self.scheme == "memory":
            return kombu.Connection(transport=restoring_memory_transport())
        options: dict[str, Any] = {}
        if self.scheme in ("amqp", "amqps", "pyamqp"):
            options["confirm_publish"] = True
        if self.scheme in ("redis", "rediss"):
            try:
                from .transports.redis import redis_connection
            except ImportError as exc:  # kombu's Redis transport and redis-py come with the extra only
                raise missing_extra("the Redis broker (redis://)", "redis", exc) from None
            options["visibility_timeout"] = self.settings.redis_visibility_timeout
            return redis_connection(self.url, transport_options=options, connect_timeout=5)
        if self.scheme in ("amqp", "pyamqp"):  # amqps: kombu reads TLS from the scheme; py-amqp's own reads
            from .transports.amqp import BufferedAmqpTransport

            return kombu.Connection(
                self.url, transport=BufferedAmqpTransport, transport_options=options, connect_timeout=5
            )
        return kombu.Connection(self.url, transport_options=options, connect_timeout=5)

    def connect(self, conn: kombu.Connection, retries: int | None = None) -> None:
        """Connect `conn`, retrying `retries` times (default: the `publish_retries` setting) with backoff.

        With `abort`, the pair a caller (a consumer session) uses to open and to drop its connections.

        Raises:
            BrokerUnavailable: the broker could not be reached; says where and what to check.
        """
        if retries is None:
            retries = self.settings.publish_retries

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
            self.connect(conn)
        finally:
            conn.release()

    # -- queues --------------------------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        """The durable queue `name` on the default exchange, with the arguments of its kind (queues.py)."""
        kind = self.queue_kind(name)
        found = self._queues.get((name, kind))
        if found is None:
            arguments = declared_arguments(kind, name, self.settings) if self._is_amqp() else None
            found = Queue(
                name,
                DEFAULT_EXCHANGE,
                routing_key=name,
                durable=True,
                auto_delete=False,
                queue_arguments=arguments,
                no_declare=self._is_amqp() and arguments is None,  # an adopted queue is used as it is
            )
            self._queues[(name, kind)] = found
        return found

    def queue_kind(self, name: str) -> QueueKind:
        """`classic`, `quorum`, or `adopted` (an existing quorum queue of `queue_type="auto"`, once found)."""
        configured = self.settings.queue_type_for(name)
        return self._kinds.get(name, CLASSIC) if configured == AUTO_QUEUE_TYPE else configured

    def declare_queue(self, name: str, channel: Any) -> Any:
        """Declare queue `name` on `channel` (a quorum queue's `.dlq` first) and return it bound to the channel.

        Raises:
            QueueMismatch: the queue exists with other arguments (RabbitMQ PRECONDITION_FAILED). The broker
                has closed the channel then: the caller drops its connection, as after any failure.
        """
        kind = self.queue_kind(name)
        try:
            if self._is_amqp() and self.settings.queue_type_for(name) == AUTO_QUEUE_TYPE:
                kind = self._kinds[name] = probe(channel, name, self.settings)
            elif self._is_amqp() and kind == QUORUM and not name.endswith(DEAD_LETTER_SUFFIX):
                # Where the broker's delivery limit sends a message: a queue must be there, or it is dropped.
                self.declare_queue(name + DEAD_LETTER_SUFFIX, channel)
            bound = self.queue(name)(channel)
            bound.declare()
        except Exception as exc:
            if self._is_amqp() and refused(exc):
                ours = declared_arguments(kind, name, self.settings)
                refusal = Refusal.learn(channel, name, ours, reply_of(exc))
                fits = fitting_type(channel, name, kind, refusal, self.settings)
                line = mismatch_line(name, kind, refusal, self.url_masked, self.settings, fits)
                raise QueueMismatch(line) from None
            raise
        return bound

    def check_priority(self, queue: str, priority: int) -> None:
        """Refuse a priority that `queue` would ignore: a quorum queue on RabbitMQ before 4.0 is first in,
        first out. Declares the queue first (`check_queue`) to know its kind and the broker's version.

        Raises:
            ConfigurationError: `priority` is not 0 and the queue is a quorum queue on RabbitMQ < 4.0.
            QueueMismatch: see `declare_queue`.
        """
        if not priority or not self._is_amqp() or self.settings.queue_type_for(queue) == CLASSIC:
            return
        self.check_queue(queue)
        if self.queue_kind(queue) != CLASSIC and not quorum_priorities(self._server_version):
            raise ConfigurationError(
                f"priority={priority} for queue {queue!r}, a quorum queue on RabbitMQ "
                f"{self._server_version or '(version unknown)'}: quorum queues before RabbitMQ 4.0 deliver "
                "first in, first out and ignore priorities; send it without priority, or to a classic queue "
                "(queue_types={...: 'classic'})"
            )

    def broker_priority(self, priority: int) -> int:
        """decortask priority (0..9, higher sooner) as this broker reads it (Redis: lower is sooner)."""
        if self.scheme in ("redis", "rediss"):
            return MAX_PRIORITY - priority
        return priority

    # -- publishing ----------------------------------------------------------------------------------------

    def _producer(self, retries: int | None = None) -> tuple[kombu.Connection, kombu.Producer, set[str]]:
        state = getattr(self._local, "producer", None)
        if state is None:
            conn = self.connection()
            self.connect(conn, retries)
            self._note_version(conn)
            producer = kombu.Producer(conn.default_channel, exchange=DEFAULT_EXCHANGE)
            if self._is_amqp():
                confirm_tracker(producer.channel)  # before any publish: it numbers them from the first
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

    def _note_version(self, conn: kombu.Connection) -> None:
        """Keep the RabbitMQ version a connection reports (`check_priority` asks it of quorum queues)."""
        if self._is_amqp():
            version = conn.connection.server_properties.get("version", "")
            self._server_version = version.decode() if isinstance(version, bytes) else str(version)

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
        """Publish (body, queue, priority, headers) items over one connection, retrying the rest on failure.

        The whole batch travels in one go: on AMQP every message is sent before the confirms are awaited
        (once, for all of them); on Redis one pipeline pushes them, one LPUSH per queue
        (transports/redis.py). Nothing returns before the broker
        took every item; after a connection failure the unconfirmed items are sent again (a duplicate
        delivery is skipped by the worker's receipt rules).
        """
        pending = list(items)
        attempts = 0
        while pending:
            try:
                _conn, producer, declared = self._producer()
                for _body, queue, _priority, _headers in pending:
                    if queue not in declared:
                        self.declare_queue(queue, producer.channel)
                        declared.add(queue)
                push = getattr(producer.channel, "push_many", None)  # Redis: the envelopes in one round trip
                if push is not None and push(
                    [(b, q, self.broker_priority(p), h) for b, q, p, h in pending], 2 if persistent else 1
                ):
                    pending.clear()
                    continue
                confirms = confirm_tracker(producer.channel) if self._is_amqp() else None
                grouped: contextlib.AbstractContextManager[Any]
                if confirms is not None:
                    grouped = confirms.pipelined()
                else:  # one pipeline for the Redis pushes; one message needs no pipeline
                    grouped = producer.batch() if len(pending) > 1 else contextlib.nullcontext(0)
                with grouped as first:
                    for body, queue, priority, headers in pending:
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
                if confirms is not None:
                    confirms.wait(first, self.settings.confirm_timeout)
                pending.clear()
            except QueueMismatch:
                self._drop_producer()  # the broker closed the channel: the next publish starts afresh
                raise
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

    @property
    def broadcasts(self) -> bool:
        """Whether this broker can tell every worker at once (the control exchange); see `broadcast`."""
        return self.scheme in BROADCAST_SCHEMES

    def broadcast_cancel(self, task_id: str) -> bool:
        """Tell every worker that `task_id` was asked to cancel; best effort, True if the broker took it.

        The request is already in the store: a worker that misses this finds it at its next store poll,
        so a broker that is down costs a log line and one quick connection attempt, never an error.
        """
        if not self.broadcasts:
            return False
        try:
            _conn, producer, declared = self._producer(retries=0)
            if CONTROL_EXCHANGE.name not in declared:
                CONTROL_EXCHANGE(producer.channel).declare()
                declared.add(CONTROL_EXCHANGE.name)
            producer.publish(
                encode_cancel(task_id),
                exchange=CONTROL_EXCHANGE,
                routing_key="",
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                delivery_mode=1,
                expiration=CONTROL_TTL_MS / 1000,
                retry=False,
                timeout=self.settings.confirm_timeout,
            )
            return True
        except Exception as exc:
            self._drop_producer()
            logger.warning(
                "could not broadcast the cancel of %s on %s (%s); workers will see it at their next store poll",
                task_id,
                self.url_masked,
                mask_text(str(exc)) or type(exc).__name__,
            )
            return False

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

    def open_consumer(
        self,
        queues: Iterable[str],
        prefetch: int,
        consume: bool = True,
        *,
        on_cancel: Callable[[str], None] | None = None,
        consumer_id: str = "",
    ) -> ConsumerSession:
        """A consumer connection on `queues`; with `consume=False` only `get()` fetches messages.

        `on_cancel` (called on the consuming thread with a task id) subscribes the session to the control
        exchange where the broker has one; `consumer_id` names the session's control queue.
        """
        self._inspecting()
        return ConsumerSession(
            self, list(queues), prefetch, consume, on_cancel=on_cancel, consumer_id=consumer_id
        )

    def _inspecting(self) -> None:
        hook = self.before_inspect
        if hook is not None:
            hook()

    @contextlib.contextmanager
    def _admin_channel(self) -> Iterator[Any]:
        """A channel on a short-lived connection, for queue administration off the hot path."""
        conn = self.connection()
        try:
            self.connect(conn, 1)
            yield conn.default_channel
        finally:
            conn.release()

    def check_queue(self, name: str) -> None:
        """Declare `name` once per process, on a short-lived connection, before a call hands it a message.

        The outbox publishes after `.delay()` returned, so a queue that exists with other arguments would
        otherwise never reach the caller; this is where it does, on the first call. A broker that cannot
        be reached is not an error here, and is not tried again for this queue (one connect attempt per
        queue and process): the background publisher and the relay send the message, and log why not.

        Raises:
            QueueMismatch: the queue exists with other arguments (see `declare_queue`).
        """
        if name in self._checked_queues:
            return
        conn = self.connection()
        try:
            self.connect(conn, 0)
            self._note_version(conn)
            self.declare_queue(name, conn.default_channel)
        except QueueMismatch:
            raise
        except Exception:  # unreachable: the background publisher reports it
            pass
        finally:
            self.abort(conn)  # also after a refused declaration, which closed the channel
        self._checked_queues.add(name)

    def queue_size(self, name: str) -> int:
        """Ready messages in `name` (0 if the queue does not exist yet)."""
        self._inspecting()
        with self._admin_channel() as channel:
            try:
                result = self.queue(name)(channel).queue_declare(passive=True)
            except Exception:  # not declared yet: nothing is waiting in it
                return 0
            return int(result.message_count)

    def purge(self, name: str) -> int:
        """Delete the ready messages of `name`; returns how many."""
        self._inspecting()
        with self._admin_channel() as channel:
            return int(self.declare_queue(name, channel).purge() or 0)

    def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages (tests and `decortask purge --delete`)."""
        with self._admin_channel() as channel, contextlib.suppress(Exception):  # already gone
            self.queue(name)(channel).delete()

    def liveness_probe(self) -> LivenessProbe | None:
        """The probe that sees a worker's death from its connection to this broker (docs/reliability.md),
        or None: memory://, or turned off by the `liveness_probe` setting (heartbeats only)."""
        if not self.settings.liveness_probe:
            return None
        if self.scheme == "sqlite":
            from .transports.sqlite_owners import FileProbe

            return FileProbe(self._sqlite_path)
        if self.scheme in ("redis", "rediss"):
            from .transports.redis_liveness import RedisProbe

            return RedisProbe(self.url, self.settings.lease_timeout)
        if self._is_amqp():
            from .transports.amqp_liveness import AmqpProbe

            return AmqpProbe(self)
        return None

    def close(self) -> None:
        with self._lock:
            producers, self._all_producers = self._all_producers, []
        for conn in producers:
            with contextlib.suppress(Exception):
                conn.release()
        self._local = threading.local()


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    name = type(exc).__name__
    return any(
        word in name for word in ("Connection", "Channel", "Recoverable", "Timeout", "OperationalError")
    )
