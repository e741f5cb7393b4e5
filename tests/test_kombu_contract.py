"""What decortask relies on inside kombu (and py-amqp, redis-py), checked symbol by symbol; no broker needed.

`transports/redis.py` and `transports/sqlite.py` subclass kombu's channels and QoS and override private
methods that kombu's own poller and consumers call; `confirms.py` and `transport.py` reach into py-amqp.
No public API promises any of this, so a kombu release may change it without notice. Each row of `RELIED`
names one symbol, the decortask module relying on it and how, and the shape relied upon: the parameters,
a call kombu makes from it into decortask's override, or just that it exists. The probes below it run kombu's
code on stand-ins where the behaviour matters more than the shape. A failure reads "kombu 5.8.0 changed
kombu.transport.redis.Channel._brpop_read: decortask's transports/redis.py overrides it ...; re-check ...":
re-read that kombu code before widening the kombu pin in pyproject.toml.

Behaviour that needs a server (the envelope `push_many` writes, the fetch script's bookkeeping) is checked
against kombu's own results in tests/test_redis_transport.py.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from unittest import mock

import pytest

REDIS = "transports/redis.py"
SQLITE = "transports/sqlite.py"
MEMORY = "transports/memory.py"
GUARD = "transports/guard.py"
CONFIRMS = "transports/confirms.py"
AMQP = "transports/amqp.py"
SESSION = "transports/session.py"
TRANSPORT = "transport.py"

REDIS_CHANNEL = "kombu.transport.redis.Channel"
REDIS_QOS = "kombu.transport.redis.QoS"
REDIS_BATCH = "kombu.transport.redis.PublishBatch"
POLLER = "kombu.transport.redis.MultiChannelPoller"
CHANNEL = "kombu.transport.virtual.Channel"
QOS = "kombu.transport.virtual.QoS"
VTRANSPORT = "kombu.transport.virtual.Transport"


@dataclass(frozen=True)
class Relied:
    """One symbol decortask relies on and the shape it relies on.

    Exactly one check applies: `params` compares the parameters, written `(self, queue, timeout=)` (names,
    `=` after one with a default, `*args` and `**kwargs` as declared); `mentions` requires that text in the
    symbol's source (a call kombu makes into what decortask overrides); with neither, the symbol exists on its
    class, or the class or a base assigns `self.<name>` (an instance attribute).
    """

    symbol: str
    by: str
    how: str
    params: str | None = None
    mentions: str | None = None


def _override(symbol: str, params: str, why: str, by: str = REDIS) -> Relied:
    return Relied(symbol, by, f"overrides it ({why})", params=params)


def _call(symbol: str, params: str, why: str, by: str = REDIS) -> Relied:
    return Relied(symbol, by, f"calls it ({why})", params=params)


def _uses(symbol: str, why: str, by: str = REDIS) -> Relied:
    return Relied(symbol, by, f"uses it ({why})")


def _kombu_calls(symbol: str, text: str, why: str, by: str = REDIS) -> Relied:
    return Relied(symbol, by, f"counts on it calling `{text}` ({why})", mentions=text)


RELIED: list[Relied] = [
    # -- transports/redis.py: publishing -------------------------------------------------------------------
    _override(f"{REDIS_BATCH}.__init__", "(self, channel, max_size)", "GroupedPublishBatch"),
    _override(f"{REDIS_BATCH}.publish", "(self, message, **kwargs)", "collects the pushes to merge them"),
    _override(f"{REDIS_BATCH}.flush", "(self)", "sends the merged pushes, then kombu's flush"),
    _override(f"{REDIS_BATCH}.discard", "(self)", "drops the held-back pushes too"),
    _call(f"{REDIS_BATCH}.add", "(self, name, *args)", "kombu's _put adds each push through it"),
    _call(f"{REDIS_BATCH}._check_usable", "(self)", "before publishing and flushing"),
    *(
        _uses(f"{REDIS_BATCH}.{name}", "GroupedPublishBatch keeps kombu's batch state")
        for name in ("channel", "max_size", "pipeline", "_buffered", "_collecting", "_failed")
    ),
    _kombu_calls(
        f"{REDIS_CHANNEL}._put", "publish_batch.add(", "a batched publish reaches GroupedPublishBatch.add"
    ),
    _override(f"{REDIS_CHANNEL}.create_publish_batch", "(self, max_size)", "returns GroupedPublishBatch"),
    _override(f"{REDIS_CHANNEL}.conn_or_acquire", "(self, client=)", "reuses one redis-py client"),
    _uses(f"{REDIS_CHANNEL}.pool", "a reused client must belong to the channel's current pool"),
    _call(f"{REDIS_CHANNEL}._create_client", "(self, asynchronous=)", "builds the reused client"),
    _override(f"{REDIS_CHANNEL}._next_delivery_tag", "(self)", "a counter instead of a uuid4"),
    _kombu_calls(
        f"{CHANNEL}._inplace_augment_message",
        "self._next_delivery_tag()",
        "every published message takes its tag from the override",
    ),
    _call(f"{REDIS_CHANNEL}._q_for_pri", "(self, queue, pri)", "push_many picks kombu's priority list"),
    _call(
        f"{REDIS_CHANNEL}._get_message_priority", "(self, message, reverse=)", "push_many, with reverse=False"
    ),
    _uses(f"{REDIS_CHANNEL}._expires", "push_many leaves queues with an expiry to kombu"),
    # -- transports/redis.py: consuming --------------------------------------------------------------------
    _override(f"{REDIS_CHANNEL}.__init__", "(self, *args, **kwargs)", "sets its state, then kombu's"),
    _kombu_calls(
        f"{REDIS_CHANNEL}.__init__", "'BRPOP': self._brpop_read", "the poller reads replies via the override"
    ),
    _override(f"{REDIS_CHANNEL}._brpop_start", "(self, timeout=)", "sends the fetch script instead of BRPOP"),
    _override(f"{REDIS_CHANNEL}._brpop_read", "(self, **options)", "reads the fetch script's reply"),
    _kombu_calls(
        f"{REDIS_CHANNEL}._brpop_start",
        "self.client.connection.send_command(",
        "the fetch is sent on BRPOP's connection, without waiting",
    ),
    _kombu_calls(
        f"{REDIS_CHANNEL}._brpop_read",
        "self.client.parse_response(self.client.connection",
        "the fetch reply is read the same way",
    ),
    _call(f"{REDIS_CHANNEL}._flush_brpop_reauth", "(self)", "after reading a reply, as kombu's _brpop_read"),
    _kombu_calls(f"{POLLER}._register_BRPOP", "channel._brpop_start()", "the poller asks the override"),
    _kombu_calls(
        f"{POLLER}._register_BRPOP", "channel._in_poll", "a sent fetch counts as an outstanding BRPOP"
    ),
    _kombu_calls(f"{POLLER}.maybe_check_brpop_health", "channel._brpop_sent_at", "set when a fetch is sent"),
    *(
        _uses(f"{REDIS_CHANNEL}.{name}", "the fetch and its bookkeeping")
        for name in (
            "_in_poll",
            "_brpop_sent_at",
            "_closing",
            "_queue_cycle",
            "ack_emulation",
            "global_keyprefix",
            "priority_steps",
            "unacked_key",
            "unacked_index_key",
            "client",
            "active_queues",
            "connection_errors",
            "qos",
        )
    ),
    _call("kombu.utils.scheduling.round_robin_cycle.consume", "(self, n)", "the fetch's queue order"),
    _call("kombu.utils.scheduling.round_robin_cycle.rotate", "(self, last_used)", "rotated per message"),
    _call(f"{VTRANSPORT}._deliver", "(self, message, queue)", "fetched messages take kombu's delivery path"),
    _override(f"{REDIS_CHANNEL}.basic_consume", "(self, queue, *args, **kwargs)", "notes no_ack consumers"),
    _call(
        f"{CHANNEL}.basic_consume",
        "(self, queue, no_ack, callback, consumer_tag, **kwargs)",
        "no_ack is read as the first positional after the queue",
    ),
    _override(f"{REDIS_CHANNEL}._basic_cancel", "(self, consumer_tag)", "forgets no_ack consumers"),
    _uses(f"{REDIS_CHANNEL}._tag_to_queue", "which queue a consumer tag consumes"),
    _override(f"{REDIS_CHANNEL}.basic_get", "(self, queue, no_ack=, **kwargs)", "flushes acks first"),
    _override(f"{REDIS_CHANNEL}.close", "(self)", "flushes acks before kombu restores the unacked"),
    _uses(f"{REDIS_CHANNEL}.closed", "acks on a closed channel go out at once"),
    # -- transports/redis.py: QoS (ack emulation) ----------------------------------------------------------
    _override(f"{REDIS_QOS}.__init__", "(self, *args, **kwargs)", "adds deferred-ack state"),
    _override(f"{REDIS_QOS}.append", "(self, message, delivery_tag)", "skips what the fetch script recorded"),
    _override(f"{REDIS_QOS}.ack", "(self, delivery_tag)", "defers the Redis half of an ack"),
    _override(f"{REDIS_QOS}.restore_unacked", "(self, client=)", "flushes acks first"),
    _override(
        f"{REDIS_QOS}.restore_visible", "(self, start=, num=, interval=)", "a time floor between scans"
    ),
    _uses(f"{REDIS_QOS}._vrestore_count", "restore_visible predicts kombu's scan count"),
    _call(f"{REDIS_QOS}.pipe_or_acquire", "(self, pipe=, client=)", "flush_acks, with client="),
    _call(f"{REDIS_QOS}.restore_by_tag", "(self, tag, client=, leftmost=)", "undelivered fetched messages"),
    _uses(f"{REDIS_QOS}.unacked_key", "flush_acks"),
    _uses(f"{REDIS_QOS}.unacked_index_key", "flush_acks"),
    _call(f"{QOS}.append", "(self, message, delivery_tag)", "unbound, to skip the Redis write"),
    _call(f"{QOS}.ack", "(self, delivery_tag)", "unbound, to free the prefetch window at once"),
    _call(f"{QOS}.can_consume", "(self)", "whether a poll fetches"),
    _call(f"{QOS}.can_consume_max_estimate", "(self)", "the fetch's limit", by=f"{REDIS} and {SQLITE}"),
    _uses(f"{QOS}._delivered", "undelivered fetched messages", by=f"{REDIS} and {SQLITE}"),
    _uses(f"{QOS}.channel", "the QoS reaches its channel", by=f"{REDIS} and {SQLITE}"),
    _override("kombu.transport.redis.Transport.drain_events", "(self, connection, timeout=)", "flushes acks"),
    _uses("kombu.transport.redis.Transport.Channel", "swapped for decortask's channel"),
    _uses(f"{VTRANSPORT}.channels", "the transport's channels", by=f"{REDIS} and {SQLITE}"),
    _uses("kombu.Connection.transport_cls", "redis_connection() swaps the transport class after parsing"),
    _kombu_calls(
        "kombu.Connection.get_transport_cls", "self.transport_cls", "the class is read when first used"
    ),
    # -- transports/sqlite.py: a virtual transport ---------------------------------------------------------
    _override(f"{CHANNEL}.__init__", "(self, connection, **kwargs)", "opens its database", by=SQLITE),
    _kombu_calls(
        f"{CHANNEL}.__init__",
        "self.from_transport_options",
        "path, lease_seconds... arrive as attributes",
        SQLITE,
    ),
    _uses(f"{CHANNEL}.from_transport_options", "extended with the SQLite options", by=SQLITE),
    _override(f"{CHANNEL}._put", "(self, queue, message)", "INSERT", by=SQLITE),
    _override(f"{CHANNEL}._get", "(self, queue, timeout=)", "leases a batch", by=SQLITE),
    _override(f"{CHANNEL}._size", "(self, queue)", "counts visible rows", by=SQLITE),
    _override(f"{CHANNEL}._purge", "(self, queue)", "deletes visible rows", by=SQLITE),
    _override(f"{CHANNEL}._new_queue", "(self, queue, **kwargs)", "records the queue", by=SQLITE),
    _override(f"{CHANNEL}._has_queue", "(self, queue, **kwargs)", "reads the queue table", by=SQLITE),
    _override(f"{CHANNEL}._delete", "(self, queue, *args, **kwargs)", "drops a queue's rows", by=SQLITE),
    _override(
        f"{CHANNEL}.queue_delete", "(self, queue, if_unused=, if_empty=, **kwargs)", "unbound queues", SQLITE
    ),
    _call(
        "kombu.transport.virtual.BrokerState.queue_bindings_delete", "(self, queue)", "queue_delete", SQLITE
    ),
    _uses(f"{CHANNEL}.state", "queue_delete", by=SQLITE),
    _override(f"{CHANNEL}.drain_events", "(self, timeout=, callback=)", "renews leases per poll", by=SQLITE),
    _kombu_calls(
        f"{VTRANSPORT}._drain_channel", "channel.drain_events(", "each poll reaches the override", SQLITE
    ),
    _override(f"{CHANNEL}.basic_get", "(self, queue, no_ack=, **kwargs)", "deletes on fetch", by=SQLITE),
    _override(f"{CHANNEL}.basic_cancel", "(self, consumer_tag)", "gives back buffered rows", by=SQLITE),
    _override(f"{CHANNEL}.close", "(self)", "releases leases and closes the file", by=SQLITE),
    _uses(f"{CHANNEL}._consumers", "an ack is deferred only while consuming", by=SQLITE),
    _uses(f"{CHANNEL}._tag_to_queue", "which queue a cancelled consumer consumed", by=SQLITE),
    _uses(f"{CHANNEL}.connection", "sibling channels share leases", by=SQLITE),
    _call(f"{CHANNEL}.Message", "(payload, channel=, **kwargs)", "basic_get builds kombu's message", SQLITE),
    _kombu_calls(
        f"{VTRANSPORT}._reject_inbound_message",
        "channel.basic_reject(",
        "a message without a consumer is settled on the first channel, which asks its siblings",
        SQLITE,
    ),
    _override(f"{QOS}.reject", "(self, delivery_tag, requeue=)", "clears the lease", by=SQLITE),
    _override(f"{QOS}.restore_unacked", "(self)", "releases every lease at once", by=SQLITE),
    _kombu_calls(f"{QOS}.restore_unacked_once", "self.restore_unacked()", "on close", SQLITE),
    _call(f"{QOS}._flush", "(self)", "restore_unacked", by=SQLITE),
    _uses(f"{QOS}.prefetch_count", "the lease batch size", by=SQLITE),
    _override(f"{VTRANSPORT}.driver_version", "(self)", "the SQLite version", by=SQLITE),
    _override(f"{VTRANSPORT}.drain_events", "(self, connection, timeout=)", "waits for commits", by=SQLITE),
    _call(f"{VTRANSPORT}.__init__", "(self, client, **kwargs)", "SQLiteTransport's own init", by=SQLITE),
    _override(f"{VTRANSPORT}.close_connection", "(self, connection)", "closes the commit watch", by=SQLITE),
    _uses(f"{VTRANSPORT}.cycle", "drain_events polls its channels through it", by=SQLITE),
    _call("kombu.utils.scheduling.FairCycle.get", "(self, callback, **kwargs)", "drain_events", by=SQLITE),
    _uses(f"{VTRANSPORT}.client", "the file's path from its transport options", by=SQLITE),
    *(
        _uses(f"{VTRANSPORT}.{name}", "SQLiteTransport sets it", by=SQLITE)
        for name in ("Channel", "polling_interval", "driver_type", "driver_name", "connection_errors")
    ),
    _call("kombu.utils.json.dumps", "(s, _dumps=, cls=, default_kwargs=, **kwargs)", "payloads", SQLITE),
    _call("kombu.utils.json.loads", "(s, _loads=, decode_bytes=, object_hook=)", "payloads", SQLITE),
    # -- transports/memory.py, transports/guard.py ---------------------------------------------------------
    _uses("kombu.transport.memory.Channel.do_restore", "RestoringChannel sets it True", by=MEMORY),
    _uses("kombu.transport.memory.Transport.Channel", "swapped for RestoringChannel", by=MEMORY),
    _kombu_calls(
        f"{QOS}.restore_unacked_once", "self.channel.do_restore", "unacked go back on close", MEMORY
    ),
    _uses(f"{CHANNEL}.Message", "guard_channel swaps the message class", by=GUARD),
    _uses("kombu.transport.pyamqp.Channel.Message", "guard_channel swaps the message class", by=GUARD),
    _kombu_calls(
        "kombu.transport.pyamqp.Channel.message_to_python", "self.Message(", "messages use it", GUARD
    ),
    # -- transports/confirms.py, transport.py: py-amqp -----------------------------------------------------
    _uses("amqp.Channel._confirm_selected", "selects confirm mode once", by=CONFIRMS),
    _call("amqp.Channel.confirm_select", "(self, nowait=)", "enters confirm mode", by=CONFIRMS),
    _call(
        "amqp.Channel._basic_publish",
        "(self, msg, exchange=, routing_key=, mandatory=, immediate=, timeout=, confirm_timeout=, argsig=)",
        "counts it, and publishes through it without waiting for each confirm",
        by=CONFIRMS,
    ),
    _kombu_calls(
        "amqp.Channel.__init__",
        "self.basic_publish = self.basic_publish_confirm",
        "confirm mode swaps the publish method, which pipelined() swaps back",
        CONFIRMS,
    ),
    _kombu_calls(
        "amqp.Channel.basic_publish_confirm",
        "self._basic_publish(",
        "confirmed publishes are counted",
        CONFIRMS,
    ),
    _uses("amqp.Channel.events", "basic_ack / basic_nack listeners", by=CONFIRMS),
    _kombu_calls(
        "amqp.Channel._on_basic_ack", "self.events['basic_ack']", "acks reach the tracker", CONFIRMS
    ),
    _kombu_calls("amqp.Channel._on_basic_nack", "self.events['basic_nack']", "nacks reach it", CONFIRMS),
    _call(
        "amqp.Channel.wait",
        "(self, method, callback=, timeout=, returns_tuple=)",
        "waits for confirms",
        CONFIRMS,
    ),
    _uses("amqp.spec.Basic.Ack", "what wait() waits for", by=CONFIRMS),
    _uses("amqp.spec.Basic.Nack", "what wait() waits for", by=CONFIRMS),
    _uses("kombu.Connection._connection", "abort() resets the py-amqp socket", by=TRANSPORT),
    _uses("amqp.Connection._transport", "abort(): `transport` would reconnect", by=TRANSPORT),
    _uses("amqp.transport._AbstractTransport.sock", "abort() sets SO_LINGER 0 on it", by=TRANSPORT),
    _call("amqp.Connection.collect", "(self)", "abort() tears down without network I/O", by=TRANSPORT),
    # -- transports/amqp.py: reads in chunks; transports/session.py: acks in runs -----------------------------
    _uses("kombu.transport.pyamqp.Transport.Connection", "swapped for BufferedConnection", by=AMQP),
    _override(
        "amqp.Connection.Transport",
        "(self, host, connect_timeout, ssl=, read_timeout=, write_timeout=, socket_settings=, **kwargs)",
        "builds a BufferedTCPTransport",
        by=AMQP,
    ),
    _kombu_calls("amqp.Connection.connect", "self.Transport(", "the override builds the transport", AMQP),
    _override(
        "amqp.transport.TCPTransport._read", "(self, n, initial=, _errnos=)", "reads in chunks", by=AMQP
    ),
    _uses("amqp.transport.TCPTransport._quick_recv", "the socket's recv", by=AMQP),
    _override(
        "amqp.Connection.blocking_read", "(self, timeout=)", "serves whole buffered frames itself", by=AMQP
    ),
    _kombu_calls(
        "amqp.Connection.blocking_read",
        "self.on_inbound_frame(frame)",
        "the override hands a buffered frame on as py-amqp hands a read one",
        AMQP,
    ),
    _kombu_calls(
        "amqp.transport._AbstractTransport.read_frame",
        "unpack('>BHI', frame_header)",
        "buffered_frame reads the header as read_frame does",
        AMQP,
    ),
    _uses("amqp.transport._UNAVAIL", "fill() keeps the transport connected on them, as read_frame", by=AMQP),
    _call(
        "amqp.transport._AbstractTransport.having_timeout",
        "(self, timeout)",
        "fill() reads under the caller's timeout, as read_frame",
        by=AMQP,
    ),
    _call(
        "amqp.Channel._on_basic_deliver",
        "(self, consumer_tag, delivery_tag, redelivered, exchange, routing_key, msg)",
        "a delivery buffered whole goes to it directly",
        by=AMQP,
    ),
    _kombu_calls(
        "amqp.Channel",
        "spec.method(spec.Basic.Deliver, 'sLbss', content=True)",
        "the direct path parses basic.deliver's arguments with the same signature",
        AMQP,
    ),
    _kombu_calls(
        "amqp.Channel",
        "spec.Basic.Deliver: self._on_basic_deliver",
        "the direct path hands the delivery to the listener py-amqp registers",
        AMQP,
    ),
    _kombu_calls(
        "amqp.abstract_channel.AbstractChannel.dispatch_method",
        "one_shot = self._pending.pop(method_sig)",
        "a waiter for a delivery (`_pending`) sends it py-amqp's way",
        AMQP,
    ),
    _kombu_calls(
        "amqp.abstract_channel.AbstractChannel.dispatch_method",
        "if self.is_closing and method_sig not in",
        "a closing channel sends it py-amqp's way",
        AMQP,
    ),
    _kombu_calls(
        "amqp.method_framing.frame_handler",
        "connection.bytes_recv += 1",
        "the direct path counts its three frames as the handler does (heartbeats read the count)",
        AMQP,
    ),
    _call(
        "amqp.serialization.GenericContent.inbound_header", "(self, buf, offset=)", "decodes properties", AMQP
    ),
    _call("amqp.serialization.GenericContent.inbound_body", "(self, buf)", "sets the body", AMQP),
    _call("amqp.serialization.loads", "(format, buf, offset)", "basic.deliver's arguments", AMQP),
    _kombu_calls(
        "amqp.transport._AbstractTransport.read_frame",
        "if frame_end == 206:",
        "buffered_frame checks the end octet as read_frame does, and leaves a bad one to it",
        AMQP,
    ),
    _uses("kombu.Connection._connection", "input_waiting() finds the py-amqp connection", by=AMQP),
    _uses("amqp.Connection._transport", "input_waiting() finds the socket's transport", by=AMQP),
    _uses("amqp.transport.TCPTransport._read_buffer", "bytes read but not yet framed", by=AMQP),
    _uses("amqp.transport._AbstractTransport.raise_on_initial_eintr", "as py-amqp's _read", by=AMQP),
    _kombu_calls(
        "amqp.transport._AbstractTransport.read_frame",
        "self._read_buffer = read_frame_buffer + self._read_buffer",
        "a frame read that times out part-way keeps its bytes in the buffer the override reads from",
        AMQP,
    ),
    _call("kombu.message.Message.ack", "(self, multiple=)", "one multiple ack for a run of tags", by=SESSION),
    _uses("kombu.message.Message.delivery_tag", "the channel's number of a delivery", by=SESSION),
    _call(
        "amqp.Channel.basic_qos",
        "(self, prefetch_size, prefetch_count, a_global, argsig=)",
        "positionally: kombu's virtual channels name the third one differently",
        by=SESSION,
    ),
    _call(
        f"{CHANNEL}.basic_qos",
        "(self, prefetch_size=, prefetch_count=, apply_global=)",
        "positionally, as on py-amqp",
        by=SESSION,
    ),
    # -- transport.py, transports/session.py: kombu's public API, with the keywords passed -----------------
    _call(
        "kombu.Connection.__init__",
        "(self, hostname=, userid=, password=, virtual_host=, port=, insist=, ssl=, transport=, "
        "connect_timeout=, transport_options=, login_method=, uri_prefix=, heartbeat=, failover_strategy=, "
        "alternates=, credential_provider=, **kwargs)",
        "url, transport=, transport_options=, connect_timeout=",
        by=TRANSPORT,
    ),
    _call(
        "kombu.Connection._ensure_connection",
        "(self, errback=, max_retries=, interval_start=, interval_step=, interval_max=, callback=, "
        "reraise_as_library_errors=, timeout=)",
        "ensure_connection(max_retries, interval_start, interval_step, interval_max, errback) forwards here",
        by=TRANSPORT,
    ),
    _call(
        "kombu.Producer.publish",
        "(self, body, routing_key=, delivery_mode=, mandatory=, immediate=, priority=, content_type=, "
        "content_encoding=, serializer=, headers=, compression=, exchange=, retry=, retry_policy=, declare=, "
        "expiration=, timeout=, confirm_timeout=, **properties)",
        "every publish",
        by=TRANSPORT,
    ),
    _call(
        "kombu.Producer.batch",
        "(self, max_size=)",
        "publish_many of several messages on SQLite, memory, and Redis queues with an expiry",
        by=TRANSPORT,
    ),
    _call(
        "kombu.Consumer.__init__",
        "(self, channel, queues=, no_ack=, auto_declare=, callbacks=, on_decode_error=, on_message=, "
        "accept=, prefetch_count=, tag_prefix=)",
        "on_message= so kombu never decodes a body",
        by=SESSION,
    ),
    _call("kombu.Queue.get", "(self, no_ack=, accept=)", "the synchronous test driver", by=SESSION),
    _call("kombu.Queue.queue_declare", "(self, nowait=, passive=, channel=)", "queue_size", by=TRANSPORT),
    _call(
        "kombu.message.Message.__init__",
        "(self, body=, delivery_tag=, content_type=, content_encoding=, delivery_info=, properties=, "
        "headers=, postencode=, accept=, channel=, **kwargs)",
        "GuardedMessage intercepts `headers`",
        by=GUARD,
    ),
    # -- redis-py, under kombu's Redis channel -------------------------------------------------------------
    _call("redis.Redis.parse_response", "(self, connection, command_name, **options)", "the fetch reply"),
    _call("redis.Redis.script_load", "(self, script)", "loads the fetch script"),
    _call("redis.connection.AbstractConnection.send_command", "(self, *args, **kwargs)", "sends EVALSHA"),
    _uses("redis.exceptions.NoScriptError", "a server that lost the script gets it again (matched by name)"),
]


def _resolve(symbol: str) -> tuple[Any, str, Any]:
    """(owner, attribute name, value) for a dotted path; the value is `_MISSING` when the owner lacks it.

    Class attributes are read without running descriptors, so a property is found as a property.
    """
    parts = symbol.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:-1]:
            owner = (
                inspect.getattr_static(owner, name, _MISSING)
                if inspect.isclass(owner)
                else getattr(owner, name, _MISSING)
            )
            if owner is _MISSING:
                return _MISSING, name, _MISSING
        name = parts[-1]
        if inspect.isclass(owner):
            return owner, name, inspect.getattr_static(owner, name, _MISSING)
        return owner, name, getattr(owner, name, _MISSING)
    raise AssertionError(f"cannot import any module of {symbol}")


_MISSING: Any = object()


def _params(function: Any) -> str:
    """`(self, queue, timeout=)`: parameter names and kinds, without defaults' values or annotations."""
    if isinstance(function, (staticmethod, classmethod)):
        function = function.__func__
    shown: list[str] = []
    starred = False
    for param in inspect.signature(function).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            shown.append(f"*{param.name}")
            starred = True
        elif param.kind is param.VAR_KEYWORD:
            shown.append(f"**{param.name}")
        else:
            if param.kind is param.KEYWORD_ONLY and not starred:
                shown.append("*")
                starred = True
            shown.append(param.name + ("=" if param.default is not param.empty else ""))
    return f"({', '.join(shown)})"


def _assigned_by(owner: Any, name: str) -> bool:
    """Whether `owner` or one of its bases assigns `self.<name>` (an instance attribute) in its source."""
    assignment = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]*)?=(?!=)")
    for klass in getattr(owner, "__mro__", ()):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # builtins
            continue
        if assignment.search(source):
            return True
    return False


def _source(value: Any) -> str:
    function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    return " ".join(inspect.getsource(function).split())


def _changed(symbol: str, by: str, how: str, found: str) -> NoReturn:
    package = symbol.split(".", 1)[0]
    pytest.fail(
        f"{package} {importlib.metadata.version(package)} changed {symbol}: decortask's {by} {how}; {found}. "
        f"Re-check {by} against {package}'s source before widening the {package} pin in pyproject.toml.",
        pytrace=False,
    )


@pytest.mark.parametrize("relied", RELIED, ids=lambda relied: f"{relied.symbol}:{relied.by}")
def test_the_symbol_still_has_the_shape_decortask_relies_on(relied: Relied) -> None:
    owner, name, value = _resolve(relied.symbol)
    if owner is _MISSING:
        _changed(relied.symbol, relied.by, relied.how, f"the class holding {name!r} is gone")
    if value is _MISSING:
        if relied.params is None and relied.mentions is None and _assigned_by(owner, name):
            return
        _changed(relied.symbol, relied.by, relied.how, "it does not exist any more")
    if relied.params is not None:
        found = _params(value) if callable(value) or isinstance(value, (staticmethod, classmethod)) else None
        if found != relied.params:
            _changed(
                relied.symbol,
                relied.by,
                relied.how,
                f"expected the parameters {relied.params}, found {found or type(value).__name__}",
            )
    if relied.mentions is not None and " ".join(relied.mentions.split()) not in _source(value):
        _changed(relied.symbol, relied.by, relied.how, "its source no longer contains that call")


# -- probes: kombu's code run on stand-ins, where the behaviour matters ------------------------------------


@contextmanager
def _probing(symbol: str, by: str, how: str) -> Iterator[None]:
    """Run a probe of `symbol`; an exception from kombu's code fails with the contract's message."""
    try:
        yield
    except Exception as exc:
        _changed(symbol, by, how, f"running it on a stand-in raised {type(exc).__name__}: {exc}")


def test_kombu_message_reads_the_compression_header_back_through_the_headers_attribute() -> None:
    from kombu.message import Message as KombuMessage

    from decortask.transports.guard import guard_channel

    symbol, how = (
        "kombu.message.Message.__init__",
        "relies on it setting `headers`, then reading `compression` back",
    )
    with _probing(symbol, GUARD, how):

        class Channel:
            Message = KombuMessage

        channel = Channel()
        guard_channel(channel)
        message = channel.Message(body=b"not gzip at all", headers={"compression": "application/x-gzip"})
    if message.errors or message.body != b"not gzip at all" or "compression" in message.headers:
        _changed(
            symbol, GUARD, how, f"a guarded body was decompressed ({message.body!r}, {message.errors!r})"
        )
    assert getattr(message, "refused_compression", None) == "application/x-gzip"


def test_kombu_redis_put_hands_a_publish_batch_one_lpush_per_message() -> None:
    from kombu.transport import redis as kombu_redis
    from kombu.utils.json import dumps

    added: list[tuple[str, tuple[Any, ...]]] = []
    message = {"body": "e30=", "properties": {"priority": 0, "delivery_tag": "t1"}}
    how = "merges what kombu adds to a publish batch, expecting ('lpush', (list, payload)) per message"
    with _probing(f"{REDIS_CHANNEL}._put", REDIS, how):
        channel = kombu_redis.Channel.__new__(kombu_redis.Channel)  # no server: only what _put reads
        channel._expires = {}
        batch = mock.Mock(add=lambda name, *args: added.append((name, args)))
        kombu_redis.Channel._put(channel, "q", message, _publish_batch=batch)
    if added != [("lpush", ("q", dumps(message)))]:
        _changed(f"{REDIS_CHANNEL}._put", REDIS, how, f"it added {added!r}")


def test_kombu_publish_batch_collects_commands_in_the_list_decortask_hands_it() -> None:
    from kombu.transport import redis as kombu_redis

    collected: list[tuple[str, tuple[Any, ...]]] = []
    how = "sets `_collecting` to its own list before kombu routes a message (GroupedPublishBatch.publish)"
    with _probing(f"{REDIS_BATCH}.add", REDIS, how):
        batch = kombu_redis.PublishBatch.__new__(kombu_redis.PublishBatch)
        batch._collecting = collected
        kombu_redis.PublishBatch.add(batch, "lpush", "q", "payload")
    if collected != [("lpush", ("q", "payload"))]:
        _changed(f"{REDIS_BATCH}.add", REDIS, how, f"add() collected {collected!r} there")


def test_kombu_redis_qos_records_an_unacked_message_as_the_fetch_script_does() -> None:
    from kombu.transport import redis as kombu_redis
    from kombu.utils.json import dumps

    written: list[tuple[str, tuple[Any, ...]]] = []

    class Pipe:
        def __getattr__(self, name: str) -> Any:
            def record(*args: Any) -> Pipe:
                written.append((name, args))
                return self

            return record

    raw = {"body": "e30=", "properties": {"delivery_tag": "t1"}}
    how = (
        "writes from FETCH_SCRIPT what it writes: ZADD unacked_index {tag: now}, "
        "HSET unacked tag [payload, exchange, routing_key]"
    )
    with _probing(f"{REDIS_QOS}.append", REDIS, how):
        channel = mock.Mock(unacked_key="unacked", unacked_index_key="unacked_index")
        channel.conn_or_acquire = lambda *args, **kwargs: _context(mock.Mock(pipeline=Pipe))
        message = mock.Mock(_raw=raw, delivery_info={"exchange": "", "routing_key": "q"})
        kombu_redis.QoS(channel).append(message, "t1")
    writes = [(name, args) for name, args in written if name != "execute"]
    if (
        [name for name, _ in writes] != ["zadd", "hset"]
        or writes[0][1][0] != "unacked_index"
        or writes[1][1] != ("unacked", "t1", dumps([raw, "", "q"]))
    ):
        _changed(f"{REDIS_QOS}.append", REDIS, how, f"it wrote {writes!r}")


def test_kombu_redis_qos_scans_on_the_first_of_every_interval_calls() -> None:
    from kombu.transport import redis as kombu_redis

    class Scanned(Exception):
        pass

    def scanning(*args: Any, **kwargs: Any) -> NoReturn:
        raise Scanned

    scans = []
    how = "predicts from `_vrestore_count % interval == 0` whether kombu's call scans"
    with _probing(f"{REDIS_QOS}.restore_visible", REDIS, how):
        for count in range(12):
            qos = kombu_redis.QoS(mock.Mock(conn_or_acquire=scanning))
            qos._vrestore_count = count
            try:
                qos.restore_visible(interval=10)
            except Scanned:
                scans.append(count)
    if scans != [0, 10]:
        _changed(f"{REDIS_QOS}.restore_visible", REDIS, how, f"from counts 0..11 it scanned at {scans}")


def test_kombu_producer_passes_py_amqp_only_keywords_its_raw_publish_accepts() -> None:
    import amqp
    import kombu

    passed: dict[str, Any] = {}
    how = "points the channel's basic_publish at py-amqp's _basic_publish while pipelining"
    with _probing("kombu.Producer.publish", CONFIRMS, how):
        channel = mock.Mock(
            prepare_message=lambda body, *args, **kwargs: {"body": body},
            basic_publish=lambda message, **kwargs: passed.update(kwargs),
        )
        producer = kombu.Producer(channel, exchange=kombu.Exchange(""), auto_declare=False)
        producer.publish(
            b"{}", routing_key="q", delivery_mode=2, priority=0, headers={}, retry=False, timeout=5
        )
    unknown = sorted(set(passed) - set(inspect.signature(amqp.Channel._basic_publish).parameters))
    if not passed or unknown:
        _changed(
            "kombu.Producer.publish", CONFIRMS, how, f"it passes {sorted(passed)}, unknown there: {unknown}"
        )


def test_py_amqp_reports_confirms_to_the_tracker_and_pipelining_restores_confirmed_publishing() -> None:
    import amqp

    from decortask.transports.confirms import ConfirmTracker

    how = "listens on channel.events['basic_ack'] and ['basic_nack'] for (delivery_tag, multiple)"
    with _probing("amqp.Channel._on_basic_ack", CONFIRMS, how):
        channel = amqp.Channel(mock.MagicMock(channels={}, confirm_publish=True), channel_id=1)
        confirming = channel.basic_publish
        channel._confirm_selected = True  # confirm.select would talk to a broker
        tracker = ConfirmTracker(channel)
        channel._on_basic_ack(1, False)
        channel._on_basic_nack(2, False)
    if (tracker.confirmed, tracker._nacked) != (2, 2):
        _changed(
            "amqp.Channel._on_basic_ack",
            CONFIRMS,
            how,
            f"after ack 1, nack 2 it confirmed {tracker.confirmed}",
        )
    with tracker.pipelined():
        assert channel.basic_publish is channel._basic_publish
    assert channel.basic_publish == confirming


@contextmanager
def _context(value: Any) -> Iterator[Any]:
    yield value
