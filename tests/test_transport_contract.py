"""One contract for every transport (memory, embedded SQLite, Redis, RabbitMQ) through `BrokerTransport`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import AMQP_URL, REDIS_URL, require_amqp, require_redis
from transport_helpers import receive

from decortask import BrokerUnavailable, ConfigurationError
from decortask.config import Settings
from decortask.transport import BrokerTransport, Delivery


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def transport(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[BrokerTransport]:
    kind = request.param
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    elif kind == "redis":
        require_redis()
        url = REDIS_URL
    else:
        require_amqp()
        url = AMQP_URL
    made = BrokerTransport(url, Settings.load({"broker_url": url}))
    yield made
    made.close()


@pytest.fixture
def queue(transport: BrokerTransport) -> Iterator[str]:
    name = f"contract-{uuid.uuid4().hex[:10]}"
    yield name
    for each in (name, name + ".dlq"):
        transport.delete_queue(each)


def test_publish_consume_ack_round_trip(transport: BrokerTransport, queue: str) -> None:
    transport.publish(b'{"n":1}', queue, headers={"x-test": "yes"})
    session = transport.open_consumer([queue], prefetch=4)
    try:
        (delivery,) = receive(session, 1)
        assert delivery.body == b'{"n":1}'
        assert delivery.content_type == "application/json"
        assert delivery.headers["x-test"] == "yes"
        assert delivery.queue == queue
        session.ack(delivery)
        assert receive(session, 1, timeout=0.3) == []
    finally:
        session.close()
    assert transport.queue_size(queue) == 0


def test_requeue_redelivers(transport: BrokerTransport, queue: str) -> None:
    transport.publish(b"{}", queue)
    session = transport.open_consumer([queue], prefetch=1)
    try:
        (first,) = receive(session, 1)
        session.requeue(first)
        (again,) = receive(session, 1)
        assert again.body == b"{}"
        session.ack(again)
    finally:
        session.close()


def test_unacked_messages_return_when_the_consumer_closes(transport: BrokerTransport, queue: str) -> None:
    transport.publish_many([(b'{"n":%d}' % n, queue, 0, None) for n in range(3)])
    session = transport.open_consumer([queue], prefetch=3)
    assert len(receive(session, 3)) == 3
    session.close()
    again = transport.open_consumer([queue], prefetch=3)
    try:
        bodies = sorted(d.body for d in receive(again, 3))
        assert bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    finally:
        again.close()


def test_queue_size_and_purge(transport: BrokerTransport, queue: str) -> None:
    transport.publish_many([(b"{}", queue, 0, None) for _ in range(5)])
    assert transport.queue_size(queue) == 5
    assert transport.purge(queue) == 5
    assert transport.queue_size(queue) == 0


def test_get_fetches_one_message_without_a_consumer(transport: BrokerTransport, queue: str) -> None:
    transport.publish(b'{"only":1}', queue)
    session = transport.open_consumer([queue], prefetch=1, consume=False)
    try:
        delivery = session.get(queue)
        assert delivery is not None and delivery.body == b'{"only":1}'
        session.ack(delivery)
        assert session.get(queue) is None
    finally:
        session.close()


def test_dead_letter_keeps_the_body_and_says_why(transport: BrokerTransport, queue: str) -> None:
    transport.publish(b"\x80not-json", queue)
    session = transport.open_consumer([queue], prefetch=1)
    try:
        (delivery,) = receive(session, 1)
        transport.dead_letter(delivery, "decode_error", "body is not valid JSON")
        session.ack(delivery)
    finally:
        session.close()
    dlq = transport.open_consumer([queue + ".dlq"], prefetch=1, consume=False)
    try:
        dead = dlq.get(queue + ".dlq")
        assert dead is not None
        assert dead.body == b"\x80not-json"
        assert dead.headers["x-decortask-reason"] == "decode_error"
        assert dead.headers["x-decortask-original-queue"] == queue
        dlq.ack(dead)
    finally:
        dlq.close()


def test_higher_priority_is_delivered_first(transport: BrokerTransport, queue: str) -> None:
    if transport.scheme == "memory":
        pytest.skip("kombu's memory transport has no priorities")
    transport.publish(b'{"p":0}', queue, priority=0)
    transport.publish(b'{"p":9}', queue, priority=9)
    transport.publish(b'{"p":5}', queue, priority=5)
    session = transport.open_consumer([queue], prefetch=1, consume=False)
    try:
        order = []
        for _ in range(3):
            delivery = session.get(queue)
            assert delivery is not None
            order.append(delivery.body)
            session.ack(delivery)
    finally:
        session.close()
    assert order == [b'{"p":9}', b'{"p":5}', b'{"p":0}']


def test_unknown_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown broker URL 'kafka://u:\\*\\*\\*\\*@h/'"):
        BrokerTransport("kafka://u:sentinel@h/", Settings())


@pytest.mark.parametrize(
    "url", ["amqp://guest:sentinel-pw@127.0.0.1:1//", "redis://:sentinel-pw@127.0.0.1:1/0"]
)
def test_unreachable_broker_raises_broker_unavailable_with_masked_url(url: str) -> None:
    made = BrokerTransport(url, Settings.load({"broker_url": url, "publish_retries": 1}))
    with pytest.raises(BrokerUnavailable) as caught:
        made.publish(b"{}", "nowhere")
    assert "sentinel-pw" not in str(caught.value)
    assert "****" in str(caught.value)


def test_a_cancel_broadcast_reaches_every_consuming_session(transport: BrokerTransport, queue: str) -> None:
    heard: dict[str, list[str]] = {"a": [], "b": []}
    sessions = [
        transport.open_consumer(
            [queue], prefetch=1, on_cancel=heard[name].append, consumer_id=f"{queue}-{name}"
        )
        for name in heard
    ]
    try:
        sent = transport.broadcast_cancel("task-to-stop")
        if not transport.broadcasts:
            assert sent is False  # the embedded and memory brokers rely on the store poll alone
            return
        assert sent is True
        # Redis subscribes on a session's first drain and PUBLISH reaches only current subscribers, so the
        # hint is repeated until both heard it (a missed hint costs a worker one store poll, nothing more).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(heard.values()):
            for session in sessions:
                session.drain(0.05)
            if not all(heard.values()):
                transport.broadcast_cancel("task-to-stop")
        assert set(heard["a"]) == set(heard["b"]) == {"task-to-stop"}
        transport.publish(b'{"n":1}', queue)  # task deliveries are unaffected by the control channel
        (delivery,) = receive(sessions[0], 1) or receive(sessions[1], 1)
        assert delivery.body == b'{"n":1}'
    finally:
        for session in sessions:
            session.close()


def test_a_cancel_broadcast_to_a_broker_that_is_down_is_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "amqp://guest:s3cr3t-sentinel@127.0.0.1:1//"
    transport = BrokerTransport(url, Settings.load({"broker_url": url, "publish_retries": 0}))
    try:
        assert transport.broadcast_cancel("task-to-stop") is False
    finally:
        transport.close()
    assert "next store poll" in caplog.text
    assert "s3cr3t-sentinel" not in caplog.text


def _still_held_by_the_broker(transport: BrokerTransport, delivery: Delivery) -> bool:
    """Whether the broker still keeps an acked delivery in its unacked bookkeeping (Redis, SQLite)."""
    if transport.scheme == "redis":
        import redis

        return bool(redis.Redis.from_url(transport.url).hexists("unacked", delivery.raw.delivery_tag))
    if transport.scheme == "sqlite":
        import sqlite3

        with sqlite3.connect(transport._sqlite_path) as db:
            return bool(db.execute("SELECT count(*) FROM decortask_messages").fetchone()[0])
    return False  # RabbitMQ and memory settle an ack at once


def test_flush_acks_settles_deferred_acks_without_a_poll(transport: BrokerTransport, queue: str) -> None:
    # A worker shutting down settles outcomes without polling; flush_acks must make those acks final.
    transport.publish(b"{}", queue)
    session = transport.open_consumer([queue], prefetch=4)
    try:
        (delivery,) = receive(session, 1)
        session.ack(delivery)
        session.flush_acks()
        assert not _still_held_by_the_broker(transport, delivery)
    finally:
        session.close()
