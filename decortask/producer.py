"""apply_async: build the message, claim the idempotency key, record PENDING/SCHEDULED, publish."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .message import Message
from .states import TaskStatus
from .store.base import ScheduleEntry, TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .handle import TaskHandle
    from .task import Task


def send_task(
    app: Decortask,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    countdown: float | None = None,
    eta: datetime | float | None = None,
    expires: datetime | float | None = None,
    priority: int | None = None,
    queue: str | None = None,
    idempotency_key: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TaskHandle[Any]:
    """Validate, record and publish one call: what `.delay()` and `.apply_async()` do.

    The record is written before the message is published, so a worker always finds it; a failed publish
    deletes the record again so no PENDING record is left behind for a message that was never sent.
    """
    from .handle import TaskHandle

    task.bind_arguments(args, kwargs)
    now = time.time()
    due = _due_time(now, countdown, eta)
    options = task.options
    expires_at = _expiry_time(now, expires if expires is not None else options.expires)
    prio = options.priority if priority is None else priority
    if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 9:
        raise ConfigurationError(f"priority={prio!r} is invalid: expected an integer from 0 to 9")
    if tags is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ConfigurationError("tags must map strings to strings")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
        raise ConfigurationError("idempotency_key must be a non-empty string")
    target = queue or options.queue or app.settings.default_queue
    message = Message(
        id=uuid.uuid4().hex,
        task=task.name,
        args=list(args),
        kwargs=kwargs,
        attempt=1,
        eta=due,
        expires=expires_at,
        created_at=now,
        idempotency_key=idempotency_key,
        tags=dict(tags or {}),
        priority=prio,
        cipher=app.cipher,  # the broker sees only ciphertext; the store keeps the arguments (it is trusted)
    )
    body = message.encode(app.settings.max_payload_bytes)
    record = TaskRecord(
        id=message.id,
        name=task.name,
        queue=target,
        status=TaskStatus.SCHEDULED if due is not None else TaskStatus.PENDING,
        created_at=now,
        updated_at=now,
        args=message.args,
        kwargs=message.kwargs,
        tags=message.tags,
        idempotency_key=idempotency_key,
        priority=prio,
        persist=options.persist,
        scheduled_for=due,
    )
    store = app.store
    if due is not None:
        # The entry is written before the record: a crash in between leaves an entry whose message
        # creates its record on receipt, never a record that nothing will ever publish.
        entry = ScheduleEntry(
            id=f"{message.id}:1",
            task_id=message.id,
            queue=target,
            due_at=due,
            body=body.decode(),
            priority=prio,
        )
        store.add_schedule(entry)
        stored = store.create(record)
        if stored.id != message.id:
            store.remove_schedule([entry.id])
        return TaskHandle(app, stored.id, stored.name)
    stored = store.create(record)
    if stored.id != message.id:
        return TaskHandle(app, stored.id, stored.name)
    try:
        app.transport.publish(body, target, priority=prio, persistent=options.persist)
    except BaseException:
        store.delete(message.id)  # no phantom PENDING record for a message that was never sent
        raise
    return TaskHandle(app, message.id, task.name)


def _timestamp(value: datetime | float, what: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"{what} is a naive datetime; pass a timezone-aware one, e.g. datetime.now(timezone.utc)"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a timezone-aware datetime or UNIX seconds, got {value!r}")
    return float(value)


def _due_time(now: float, countdown: float | None, eta: datetime | float | None) -> float | None:
    if countdown is not None and eta is not None:
        raise ConfigurationError("give countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or countdown < 0:
            raise ConfigurationError(f"countdown must be a number of seconds >= 0, got {countdown!r}")
        return now + countdown if countdown > 0 else None
    if eta is not None:
        when = _timestamp(eta, "eta")
        return when if when > now else None  # a past eta runs now
    return None


def _expiry_time(now: float, expires: datetime | float | None) -> float | None:
    if expires is None:
        return None
    if isinstance(expires, datetime):
        return _timestamp(expires, "expires")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
        raise ConfigurationError(f"expires must be seconds > 0 or a timezone-aware datetime, got {expires!r}")
    return now + float(expires)
