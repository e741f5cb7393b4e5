"""The control exchange: a fanout that tells every worker at once about a cancel request.

A broadcast is only a hint. The cancel request itself is written to the store first, and a worker that
hears a broadcast reads the store before it stops anything, so a message forged by someone with broker
access cannot cancel a task, and a missed broadcast (a worker reconnecting, the broker down) only means
the worker notices at its next store poll (`cancel_poll_interval`).

RabbitMQ: a fanout exchange and one exclusive, auto-deleted queue per worker connection, so nothing
outlives a worker. Redis: kombu maps fanout exchanges to PUBLISH/SUBSCRIBE, so one queue name serves
every subscriber and nothing is stored. The embedded SQLite and memory brokers have no broadcast.
"""

from __future__ import annotations

import json
from typing import Any

from kombu import Exchange, Queue

CONTROL_EXCHANGE = Exchange("decortask.control", type="fanout", durable=False, auto_delete=False)
#: Schemes whose brokers deliver one publish to every worker process.
BROADCAST_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "redis", "rediss"})
#: A control message is a few dozen bytes; anything larger is not one of ours.
MAX_CONTROL_BYTES = 1024
#: A cancel nobody heard for this long is stale: the store poll has found it by then.
CONTROL_TTL_MS = 60_000


def control_queue(scheme: str, worker_id: str) -> Queue:
    """The queue one worker consumes control messages on."""
    if scheme.startswith("redis"):
        return Queue("decortask.control", exchange=CONTROL_EXCHANGE, durable=False, auto_delete=True)
    return Queue(
        f"decortask.control.{worker_id}",
        exchange=CONTROL_EXCHANGE,
        durable=False,
        exclusive=True,
        auto_delete=True,
        queue_arguments={"x-message-ttl": CONTROL_TTL_MS},
    )


def encode_cancel(task_id: str) -> bytes:
    return json.dumps({"v": 1, "kind": "cancel", "task_id": task_id}).encode()


def decode_cancel(body: Any) -> str | None:
    """The task id of a cancel broadcast, or None for anything else (which is ignored)."""
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or len(body) > MAX_CONTROL_BYTES:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != 1 or data.get("kind") != "cancel":
        return None
    task_id = data.get("task_id")
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 200 else None
