"""Apps on each real broker for in-process suites (run_pending), and raw-message helpers.

Each app gets its own queue name (and, on Redis, its own store namespace), so tests never see each other's
messages; `close_app` deletes every queue the test used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
from conftest import AMQP_URL, REDIS_URL, require_amqp, require_redis

from decortask import Decortask
from decortask.app import reset_default_app
from decortask.transport import Delivery

KINDS = ["sqlite", "redis", "amqp"]


@dataclass
class BrokerApp:
    """An app on one broker, its default queue, and every queue to delete afterwards."""

    kind: str
    app: Decortask
    queue: str
    namespace: str | None = None
    queues: list[str] = field(default_factory=list)

    def new_queue(self, suffix: str) -> str:
        """Another queue name unique to this test (deleted with its dead-letter queue at the end)."""
        name = f"{self.queue}-{suffix}"
        self.queues += [name, name + ".dlq"]
        return name


def open_app(kind: str, tmp_path: Path, token: str, **settings: Any) -> BrokerApp:
    """An app on `kind` (sqlite, redis or amqp) with a fresh store; skips or fails if the server is down."""
    sqlite_file = f"sqlite:///{tmp_path}/decortask.db"
    namespace = None
    if kind == "sqlite":
        broker, store = sqlite_file, sqlite_file
    elif kind == "redis":
        require_redis()
        namespace = f"dt-test-{token}"
        broker, store = REDIS_URL, f"{REDIS_URL}?namespace={namespace}"
    else:
        require_amqp()
        broker, store = AMQP_URL, sqlite_file
    queue = f"t-{token}"
    app = Decortask(broker, store, default_queue=queue, **settings)
    return BrokerApp(kind, app, queue, namespace, [queue, queue + ".dlq"])


def close_app(setup: BrokerApp) -> None:
    try:
        for name in setup.queues:
            setup.app.transport.delete_queue(name)
        if setup.namespace is not None:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"{setup.namespace}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
    finally:
        setup.app.close()
        reset_default_app()


def publish_raw(
    app: Decortask,
    queue: str,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish `body` as it is, with any content type, the way a foreign or hostile producer could."""
    conn = app.transport.connection()
    try:
        conn.ensure_connection(max_retries=3)
        channel = conn.default_channel
        app.transport.queue(queue)(channel).declare()
        kombu.Producer(channel).publish(
            body,
            routing_key=queue,
            content_type=content_type,
            content_encoding="binary",
            serializer=None,
            headers=headers or {},
        )
    finally:
        conn.release()


def take_all(app: Decortask, queue: str) -> list[Delivery]:
    """Consume (ack) every ready message of `queue` and return them, raw."""
    taken: list[Delivery] = []
    session = app.transport.open_consumer([queue], prefetch=1, consume=False)
    try:
        while (delivery := session.get(queue)) is not None:
            session.ack(delivery)
            taken.append(delivery)
    finally:
        with contextlib.suppress(Exception):
            session.close()
    return taken
