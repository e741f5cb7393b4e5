"""The Redis broker's publish path (decortask/transports/redis.py): one reused client, one LPUSH per list.

Messages keep kombu's format, priorities and order, whether published one by one or in a batch; the
consume side (unacked bookkeeping, restore on close) is kombu's own and is covered by the transport contract.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import REDIS_URL, require_server

from decortask.config import Settings
from decortask.transport import BrokerTransport, ConsumerSession, Delivery
from decortask.transports.redis import _grouped


@pytest.fixture
def transport() -> Iterator[BrokerTransport]:
    require_server("Redis", "127.0.0.1", 6379)
    made = BrokerTransport(REDIS_URL, Settings.load({"broker_url": REDIS_URL}))
    yield made
    made.close()


@pytest.fixture
def queues(transport: BrokerTransport) -> Iterator[list[str]]:
    names = [f"redis-batch-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    for name in names:
        transport.delete_queue(name)


def _take_all(session: ConsumerSession, queue: str, count: int, timeout: float = 20.0) -> list[Delivery]:
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
