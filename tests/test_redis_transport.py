"""The Redis broker (decortask/transports/redis.py): publishing and consuming in batches, with kombu's format.

Publishing: one reused client, one LPUSH per list. Consuming: one Lua call pops up to the free prefetch
room and records every popped message as unacked in the same call; acks are deferred and sent together at
the next poll or on close. Messages keep kombu's format, priorities, order and unacked bookkeeping, so
kombu's restore (on close, or after the visibility timeout) finds everything a consumer ever fetched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis
from conftest import REDIS_URL, require_redis

from decortask.config import Settings
from decortask.transport import BrokerTransport, ConsumerSession, Delivery
from decortask.transports.redis import (
    BACKLOG_BRPOPS,
    FETCH_SCRIPT,
    RESTORE_SCAN_MIN_INTERVAL,
    Channel,
    _grouped,
    redis_connection,
)


@pytest.fixture
def transport() -> Iterator[BrokerTransport]:
    require_redis()
    made = BrokerTransport(REDIS_URL, Settings.load({"broker_url": REDIS_URL}))
    yield made
    made.close()


@pytest.fixture
def queues(transport: BrokerTransport) -> Iterator[list[str]]:
    names = [f"redis-batch-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    for name in names:
        transport.delete_queue(name)


def _take_all(session: ConsumerSession, queue: str, count: int, timeout: float = 120.0) -> list[Delivery]:
    # The deadline only stops a stuck consumer; 2,500 gets took over 20 s on a loaded 2-core CI machine.
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        delivery = session.get(queue)
        if delivery is None:
            time.sleep(0.01)
            continue
        got.append(delivery)
        session.ack(delivery)
    return got


def test_a_batch_arrives_whole_in_order_by_priority_on_every_queue(
    transport: BrokerTransport, queues: list[str]
) -> None:
    priorities = [0, 9, 5, 0, 9, 3, 7, 0]
    items = [
        (b'{"n":%d}' % n, queues[n % 2], priorities[n % len(priorities)], {"x-n": n}) for n in range(200)
    ]
    transport.publish_many(items)
    for queue in queues:
        sent = [(priority, n, body) for n, (body, q, priority, _) in enumerate(items) if q == queue]
        session = transport.open_consumer([queue], prefetch=1, consume=False)
        try:
            got = _take_all(session, queue, len(sent))
        finally:
            session.close()

        # Higher priority first, FIFO among equals. kombu keeps 4 lists per queue, for broker priorities
        # 0-2, 3-5, 6-8 and 9 (lower is sooner on Redis): decortask's 9 and 7 share the first.
        def step(priority: int) -> int:
            return max(s for s in (0, 3, 6, 9) if s <= transport.broker_priority(priority))

        expected = [body for _, _, body in sorted(sent, key=lambda s: (step(s[0]), s[1]))]
        assert [d.body for d in got] == expected
        assert all(d.headers["x-n"] == int(d.body[5:-1]) for d in got)
        assert transport.queue_size(queue) == 0


def test_a_batch_larger_than_one_pipeline_flush_keeps_its_order(
    transport: BrokerTransport, queues: list[str]
) -> None:
    count = 2500  # kombu flushes a batch every 1,000 commands
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(count)])
    assert transport.queue_size(queues[0]) == count
    session = transport.open_consumer([queues[0]], prefetch=1, consume=False)
    try:
        got = _take_all(session, queues[0], count)
    finally:
        session.close()
    assert [d.body for d in got] == [b'{"n":%d}' % n for n in range(count)]


def test_single_publishes_and_batches_interleave_in_publish_order(
    transport: BrokerTransport, queues: list[str]
) -> None:
    transport.publish(b'{"n":0}', queues[0])
    transport.publish_many([(b'{"n":1}', queues[0], 0, None), (b'{"n":2}', queues[0], 0, None)])
    transport.publish(b'{"n":3}', queues[0])
    session = transport.open_consumer([queues[0]], prefetch=1, consume=False)
    try:
        got = _take_all(session, queues[0], 4)
    finally:
        session.close()
    assert [d.body for d in got] == [b'{"n":0}', b'{"n":1}', b'{"n":2}', b'{"n":3}']


def test_publishing_reuses_one_redis_client_per_channel(
    transport: BrokerTransport, queues: list[str]
) -> None:
    transport.publish(b"{}", queues[0])
    conn = transport._producer()[0]
    channel = conn.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    transport.publish_many([(b"{}", queues[0], 0, None)] * 3)
    with channel.conn_or_acquire() as third:
        assert third is first
    assert transport.queue_size(queues[0]) == 4


def test_pushes_to_one_list_are_merged_and_everything_else_keeps_its_place() -> None:
    commands = [
        ("lpush", ("q", "a")),
        ("lpush", ("q", "b")),
        ("pexpire", ("q", 10)),
        ("lpush", ("q", "c")),
        ("lpush", ("q\x06\x169", "d")),
        ("lpush", ("q\x06\x169", "e")),
        ("lpush", ("q", "f")),
    ]
    assert list(_grouped(commands)) == [
        ("lpush", ("q", "a", "b")),
        ("pexpire", ("q", 10)),
        ("lpush", ("q", "c")),
        ("lpush", ("q\x06\x169", "d", "e")),
        ("lpush", ("q", "f")),
    ]
    assert list(_grouped([])) == []


# -- consuming in batches --------------------------------------------------------------------------------


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    """A plain client on the test database, to look at what the transport left in Redis."""
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


class RoundTrips:
    """Every write of a request to any Redis connection in this process, as the command names it carried.

    One entry is one round trip: a pipeline or a script is one write however many commands it holds.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[list[str]] = []
        self.raw: list[bytes] = []
        self.fetches = 0  # calls of the batch fetch script (kombu's own scripts are EVALSHAs too)
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(connection: object, command: object, check_health: bool = True) -> object:
            chunks = [command] if isinstance(command, (bytes, str)) else list(command)  # type: ignore[call-overload]
            raw = b"".join(c if isinstance(c, bytes) else str(c).encode() for c in chunks)
            names = [m.decode().upper() for m in re.findall(rb"(?:^|\r\n)\*\d+\r\n\$\d+\r\n([A-Za-z]+)", raw)]
            if names != ["PING"]:  # redis-py's own health checks
                self.sent.append(names)
                self.raw.append(raw)
                self.fetches += raw.count(FETCH_SHA)
            return original(connection, command, check_health)  # type: ignore[arg-type]

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)

    def reset(self) -> None:
        self.sent.clear()
        self.raw.clear()
        self.fetches = 0

    def commands(self) -> list[str]:
        return [name for names in self.sent for name in names]


FETCH_SHA = hashlib.sha1(FETCH_SCRIPT.encode()).hexdigest().encode()


def _drain_until(session: ConsumerSession, count: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(session.drain(0.2))
    return got


def _tag(delivery: Delivery) -> str:
    return str(delivery.raw.delivery_tag)


def test_a_batch_is_popped_and_recorded_as_unacked_in_one_round_trip(
    transport: BrokerTransport, queues: list[str], admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(10)])
    session = transport.open_consumer([queues[0]], prefetch=10)
    trips = RoundTrips(monkeypatch)
    try:
        got = session.drain(5.0)
        fetch = [names for names in trips.sent if "SCRIPT" not in names]  # the script is loaded once
        assert [d.body for d in got] == [b'{"n":%d}' % n for n in range(10)]
        assert fetch == [["EVALSHA"]], "no BRPOP, no RPOP, no unacked pipeline per message"

        # Recorded before the reply left Redis: the payload kombu's restore reads, and the index entry.
        for delivery in got:
            entry = admin.hget("unacked", _tag(delivery))
            assert entry is not None and admin.zscore("unacked_index", _tag(delivery)) is not None
            payload, exchange, routing_key = json.loads(entry)
            assert (exchange, routing_key) == ("", queues[0])
            assert payload["properties"]["delivery_tag"] == _tag(delivery)

        # Acks wait for the next poll, then go out together in one round trip: here with the next fetch.
        trips.reset()
        for delivery in got:
            session.ack(delivery)
        assert trips.sent == []
        assert all(admin.hexists("unacked", _tag(d)) for d in got)
        trips.reset()
        session.drain(0.2)
        carrying = [raw for raw in trips.raw if any(_tag(d).encode() in raw for d in got)]
        assert len(carrying) == 1 and all(_tag(d).encode() in carrying[0] for d in got)
        assert not any(admin.hexists("unacked", _tag(d)) for d in got)
        assert not any(admin.zscore("unacked_index", _tag(d)) for d in got)
    finally:
        session.close()
    assert transport.queue_size(queues[0]) == 0


def test_acks_go_out_at_the_next_poll_while_a_brpop_waits(
    transport: BrokerTransport, queues: list[str], admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = transport.open_consumer([queues[0]], prefetch=4)
    try:
        assert session.drain(0.2) == []  # the fetch found nothing: a BRPOP now waits on the connection
        transport.publish(b'{"n":1}', queues[0])
        got = _drain_until(session, 1)
        assert session.drain(0.05) == []  # a BRPOP waits again
        trips = RoundTrips(monkeypatch)
        session.ack(got[0])
        session.drain(0)  # no fetch can carry the ack: it goes out on its own, in one round trip
        assert trips.sent == [["MULTI", "ZREM", "HDEL", "EXEC"]]
        assert not admin.hexists("unacked", _tag(got[0]))
    finally:
        session.close()


def test_a_batch_never_exceeds_the_free_prefetch_room(transport: BrokerTransport, queues: list[str]) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(12)])
    session = transport.open_consumer([queues[0]], prefetch=5)
    try:
        first = session.drain(5.0)
        assert len(first) == 5
        assert session.drain(0.2) == []  # the window is full: nothing more until an ack
        session.ack(first[0])
        session.ack(first[1])
        assert len(_drain_until(session, 2)) == 2
        assert transport.queue_size(queues[0]) == 5
    finally:
        session.close()
    assert transport.queue_size(queues[0]) == 10  # the eight unacked went back on close


def test_priorities_and_the_queue_cycle_are_honoured_within_a_batch(
    transport: BrokerTransport, queues: list[str]
) -> None:
    # Lower broker priority steps first; within a step kombu rotates the queues after every message.
    items = [(b'{"q":0,"n":%d}' % n, queues[0], 0, None) for n in range(3)]
    items += [(b'{"q":1,"n":%d}' % n, queues[1], 0, None) for n in range(3)]
    items += [(b'{"q":0,"urgent":%d}' % n, queues[0], 9, None) for n in range(2)]
    items += [(b'{"q":1,"middle":0}', queues[1], 5, None)]
    transport.publish_many(items)
    session = transport.open_consumer(queues, prefetch=20)
    try:
        got = _drain_until(session, len(items))
    finally:
        session.close()
    bodies = [d.body for d in got]
    assert bodies[:2] == [b'{"q":0,"urgent":0}', b'{"q":0,"urgent":1}']
    assert bodies[2] == b'{"q":1,"middle":0}'
    rest = [json.loads(b) for b in bodies[3:]]
    assert [r["q"] for r in rest] in ([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0])  # round robin
    assert [r["n"] for r in rest if r["q"] == 0] == [0, 1, 2]
    assert [r["n"] for r in rest if r["q"] == 1] == [0, 1, 2]
    assert [d.queue for d in got[:3]] == [queues[0], queues[0], queues[1]]


_KILLED_CONSUMER = """
import sys, time
from decortask.config import Settings
from decortask.transport import BrokerTransport
from decortask.transports.redis import Channel

url, queue, keys = sys.argv[1], sys.argv[2], sys.argv[3]
Channel.unacked_key, Channel.unacked_index_key, Channel.unacked_mutex_key = keys.split(",")
transport = BrokerTransport(url, Settings.load({"broker_url": url}))
session = transport.open_consumer([queue], prefetch=5)
got = []
while len(got) < 5:
    got.extend(session.drain(1.0))
session.ack(got[0])  # deferred: the SIGKILL comes before the next poll would send it
print(" ".join(str(d.raw.delivery_tag) for d in got), flush=True)
time.sleep(60)
"""


def test_a_consumer_killed_after_fetching_a_batch_loses_nothing(
    queues: list[str], admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_redis()
    # Its own unacked keys: kombu's restore scan takes a mutex every consumer of the database shares, which
    # a consumer SIGKILLed while scanning (other tests kill workers) leaves held for five minutes.
    keys = [f"{name}-{uuid.uuid4().hex[:8]}" for name in ("unacked", "index", "mutex")]
    unacked, index = keys[0], keys[1]
    for name, key in zip(("unacked_key", "unacked_index_key", "unacked_mutex_key"), keys, strict=True):
        monkeypatch.setattr(Channel, name, key)
    fast = BrokerTransport(REDIS_URL, Settings.load({"broker_url": REDIS_URL, "redis_visibility_timeout": 1}))
    try:
        fast.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(8)])
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CONSUMER, REDIS_URL, queues[0], ",".join(keys)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert child.stdout is not None
            tags = child.stdout.readline().split()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert len(tags) == 5
        # Every fetched message is in kombu's unacked bookkeeping (the ack never left the process).
        assert all(admin.hexists(unacked, tag) and admin.zscore(index, tag) for tag in tags)
        assert fast.queue_size(queues[0]) == 3

        # kombu's restore scan hands them out again once they are older than the visibility timeout (and
        # once the channel is a second old: see RESTORE_SCAN_MIN_INTERVAL).
        conn = fast.connection()
        try:
            qos = conn.default_channel.qos
            time.sleep(max(1.2, RESTORE_SCAN_MIN_INTERVAL + 0.1))
            qos.restore_visible(num=1000, interval=1)
        finally:
            conn.release()
        assert not any(admin.hexists(unacked, tag) for tag in tags)
        session = fast.open_consumer([queues[0]], prefetch=10, consume=False)
        try:
            got = _take_all(session, queues[0], 8, timeout=5)
        finally:
            session.close()
        assert sorted(d.body for d in got) == sorted(b'{"n":%d}' % n for n in range(8))
        assert sum(d.redelivered for d in got) == 5
    finally:
        for name in queues:
            fast.delete_queue(name)
        fast.close()
        admin.delete(*keys)


def _raw_payload(queue: str, tag: str, body: str) -> str:
    """A message as kombu's Redis channel stores it in a list, with a base64 body kombu decodes on receipt."""
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
            },
        }
    )


def test_a_message_kombu_cannot_build_is_kept_unacked_and_the_rest_of_the_batch_goes_back(
    transport: BrokerTransport, queues: list[str], admin: redis.Redis
) -> None:
    token = uuid.uuid4().hex
    good = base64.b64encode(b'{"n":1}').decode()
    admin.lpush(queues[0], _raw_payload(queues[0], f"{token}.1", good))
    admin.lpush(queues[0], _raw_payload(queues[0], f"{token}.2", "abc"))  # not base64: kombu raises
    admin.lpush(queues[0], _raw_payload(queues[0], f"{token}.3", good))
    session = transport.open_consumer([queues[0]], prefetch=5)
    try:
        with pytest.raises(binascii.Error):
            session.drain(2.0)  # as kombu's own BRPOP path would raise
        # Neither lost (kombu's BRPOP would have lost it) nor back at the head to fail again at once.
        assert admin.hexists("unacked", f"{token}.2")
        assert transport.queue_size(queues[0]) == 1  # the one after it never reached anyone
        got = _drain_until(session, 2)
        assert [_tag(d) for d in got] == [f"{token}.1", f"{token}.3"]
        for delivery in got:
            session.ack(delivery)
    finally:
        session.close()
    admin.hdel("unacked", f"{token}.2")
    admin.zrem("unacked_index", f"{token}.2")


def test_acks_are_flushed_on_close_and_unacked_messages_go_back(
    transport: BrokerTransport, queues: list[str], admin: redis.Redis
) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(6)])
    session = transport.open_consumer([queues[0]], prefetch=6)
    try:
        got = _drain_until(session, 6)
        for delivery in got[:4]:
            session.ack(delivery)  # not sent yet: the close must send them before restoring the rest
    finally:
        session.close()
    assert not any(admin.hexists("unacked", _tag(d)) for d in got)
    assert transport.queue_size(queues[0]) == 2

    again = transport.open_consumer([queues[0]], prefetch=10)
    try:
        redelivered = _drain_until(again, 3, timeout=1.5)
    finally:
        again.close()
    assert sorted(d.body for d in redelivered) == [b'{"n":4}', b'{"n":5}']  # nothing acked comes back


def test_a_requeue_is_immediate(transport: BrokerTransport, queues: list[str], admin: redis.Redis) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(3)])
    session = transport.open_consumer([queues[0]], prefetch=3)
    try:
        got = _drain_until(session, 3)
        session.requeue(got[1])
        # Back in the queue and out of the unacked hash before any further poll.
        assert transport.queue_size(queues[0]) == 1
        assert not admin.hexists("unacked", _tag(got[1]))
        session.ack(got[0])
        session.ack(got[2])
        again = _drain_until(session, 1)
        assert [d.body for d in again] == [b'{"n":1}']
        assert again[0].redelivered
        session.ack(again[0])
    finally:
        session.close()
    assert transport.queue_size(queues[0]) == 0


def test_an_idle_consumer_waits_in_brpop_and_a_lone_message_arrives_at_once(
    transport: BrokerTransport, queues: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = transport.open_consumer([queues[0]], prefetch=8)
    trips = RoundTrips(monkeypatch)
    try:
        assert session.drain(0.3) == []  # one fetch finds nothing, then BRPOP waits (1 s at a time)
        assert trips.fetches == 1 and trips.commands().count("BRPOP") == 1
        trips.reset()
        for _ in range(10):
            assert session.drain(0.05) == []
        # No busy loop: no fetch per poll, at most the next BRPOP (and kombu's throttled restore scan).
        assert trips.fetches <= 1 and trips.commands().count("BRPOP") <= 1, trips.sent
        transport.publish(b'{"n":1}', queues[0])
        started = time.monotonic()
        got = _drain_until(session, 1, timeout=2)
        assert [d.body for d in got] == [b'{"n":1}']
        assert time.monotonic() - started < 0.1
        session.ack(got[0])
    finally:
        session.close()


def test_a_burst_after_an_idle_spell_is_fetched_in_batches_again(
    transport: BrokerTransport, queues: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = transport.open_consumer([queues[0]], prefetch=50)
    try:
        assert session.drain(0.2) == []  # idle: messages now come one BRPOP at a time, as with kombu
        trips = RoundTrips(monkeypatch)
        transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(40)])
        trips.reset()  # count the consumer's round trips only
        got = _drain_until(session, 40)
        assert [d.body for d in got] == [b'{"n":%d}' % n for n in range(40)]
        # At most a few BRPOPs before the backlog shows, then the rest in batches.
        assert trips.commands().count("BRPOP") <= BACKLOG_BRPOPS + 1 and trips.fetches >= 1, trips.sent
        assert len(trips.sent) < 2 * BACKLOG_BRPOPS + 4, trips.sent  # not one or two per message
        for delivery in got:
            session.ack(delivery)
    finally:
        session.close()
    assert transport.queue_size(queues[0]) == 0


def test_a_server_that_lost_the_script_gets_it_again_and_no_ack_is_lost(
    transport: BrokerTransport, queues: list[str], admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queues[0], 0, None) for n in range(2)])
    session = transport.open_consumer([queues[0]], prefetch=1)
    try:
        first = _drain_until(session, 1)  # the window is now full: nothing is outstanding
        channel = session._conn.default_channel  # type: ignore[union-attr]
        channel._fetch_sha = "0" * 40  # as after a restart or SCRIPT FLUSH: EVALSHA answers NOSCRIPT
        trips = RoundTrips(monkeypatch)
        session.ack(first[0])  # the next fetch carries it, and that fetch fails
        got = _drain_until(session, 1)
        assert [d.body for d in got] == [b'{"n":1}']
        # The failed fetch, the script loaded again, the fetch that worked: nothing else.
        assert trips.sent == [["EVALSHA"], ["SCRIPT"], ["EVALSHA"]] and trips.fetches == 1
        assert not admin.hexists("unacked", _tag(first[0]))  # the ack went with the second fetch
        session.ack(got[0])
    finally:
        session.close()
    assert transport.queue_size(queues[0]) == 0


def test_with_a_global_key_prefix_the_channel_consumes_exactly_as_kombu(
    queues: list[str], admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"pfx-{uuid.uuid4().hex[:6]}:"
    conn = redis_connection(REDIS_URL, transport_options={"global_keyprefix": prefix})
    try:
        queue = kombu.Queue(queues[0], kombu.Exchange(""), routing_key=queues[0])
        producer = kombu.Producer(conn.default_channel, exchange=kombu.Exchange(""))
        for n in range(3):
            producer.publish({"n": n}, routing_key=queues[0], declare=[queue])
        received: list[object] = []
        trips = RoundTrips(monkeypatch)
        channel = conn.channel()
        with kombu.Consumer(channel, [queue], callbacks=[lambda body, m: (received.append(body), m.ack())]):
            deadline = time.monotonic() + 5
            while len(received) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=0.5)
        channel.close()  # the last ack is sent at the latest here
        assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert "EVALSHA" not in trips.commands() and "BRPOP" in trips.commands()
        assert admin.hlen(prefix + "unacked") == 0
    finally:
        for key in admin.keys(prefix + "*"):
            admin.delete(key)
        conn.release()


def test_a_publish_writes_the_envelope_kombus_producer_writes(
    transport: BrokerTransport, queues: list[str]
) -> None:
    # transport.publish pushes its own envelopes (push_many); kombu's consumers and restore read them as
    # their own, so they must be what kombu's Producer.publish would have written, list and all.
    queue = queues[0]
    headers = {"x-decortask-reason": "demo", "n": 1.5}
    transport.publish(b'{"id":"a"}', queue, priority=3, headers=headers)
    client = redis.Redis.from_url(REDIS_URL)
    ours = {key: client.lrange(key, 0, -1) for key in client.keys(f"{queue}*")}
    for key in ours:
        client.delete(key)
    with redis_connection(REDIS_URL) as conn:
        producer = kombu.Producer(conn.default_channel)
        producer.publish(
            b'{"id":"a"}',
            routing_key=queue,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            priority=transport.broker_priority(3),
            headers=headers,
        )
    kombus = {key: client.lrange(key, 0, -1) for key in client.keys(f"{queue}*")}

    assert ours.keys() == kombus.keys() and len(next(iter(ours.values()))) == 1  # the same priority list
    (ours_message,), (kombu_message,) = (
        (json.loads(v[0]) for v in ours.values()),
        (json.loads(v[0]) for v in kombus.values()),
    )
    for message in (ours_message, kombu_message):
        message["properties"].pop("delivery_tag")
    assert ours_message == kombu_message
