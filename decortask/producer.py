"""apply_async: build the message, claim the idempotency key, record PENDING/SCHEDULED, publish.

On a network broker the record and its outbox entry are written in one store write and the message goes
to the background publisher (`outbox.py`): `.delay()` returns once the record is durable, and the relay
(`relay.py`) publishes what no publisher confirmed. `confirm=True`, and the embedded brokers, publish on
the caller's thread before returning, as every call did before the outbox.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from .call_options import NO_OPTIONS, CallOptions
from .limits import call_tags
from .message import Message
from .middleware import finish_enqueue, prepare_enqueue
from .outbox import Outgoing
from .records import schedule_entry
from .states import TaskStatus
from .store.base import ScheduleEntry, TaskRecord
from .store.outbox_state import OutboxEntry, OutboxStore
from .transactions import enqueue_publisher, enqueue_store

if TYPE_CHECKING:
    from .app import Decortask
    from .handle import TaskHandle
    from .task import Task


@dataclass(frozen=True)
class Lineage:
    """Where a call sits in a workflow (`workflow.py`): its id, parent, root and the rest of its workflow.

    A continuation's id is derived from its workflow (not random), so creating it a second time fails in
    the store instead of running it twice.
    """

    task_id: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    workflow: dict[str, Any] | None = None


NO_LINEAGE = Lineage()


def send_task(
    app: Decortask,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: CallOptions = NO_OPTIONS,
    lineage: Lineage = NO_LINEAGE,
) -> TaskHandle[Any]:
    """Validate, record and publish one call: what `.delay()` and `.apply_async()` do.

    The record is written before the message is published, so a worker always finds it; a failed publish
    deletes the record again so no PENDING record is left behind for a message that was never sent.
    """
    from .handle import TaskHandle

    task.bind_arguments(args, kwargs)
    common = _Common.of(app, task, options)
    item = common.prepare(app, task, args, kwargs, options, "", lineage)
    store = enqueue_store(app)  # the caller's transaction inside app.transaction()
    if common.due is not None:
        # The entry is written before the record: a crash in between leaves an entry whose message
        # creates its record on receipt, never a record that nothing will ever publish.
        entry = common.schedule_entry(item)
        store.add_schedule(entry)
        stored = store.create(item.record)
        if stored.id != item.message.id:
            store.remove_schedule([entry.id])
        else:
            finish_enqueue(app, item.message)
        return TaskHandle(app, stored.id, stored.name)
    publisher = enqueue_publisher(app, options.confirm)
    if publisher is None:
        stored = store.create(item.record)
    else:
        app.transport.check_queue(common.queue)  # a misdeclared queue is the caller's error, not the outbox's
        outbox_entry = common.outbox_entry(item, task.options.persist)
        stored = cast(OutboxStore, store).create_outboxed([item.record], [outbox_entry])[0]
    if stored.id != item.message.id:
        return TaskHandle(app, stored.id, stored.name)
    if publisher is None or options.confirm:
        try:
            app.transport.publish(
                item.body, common.queue, priority=common.priority, persistent=task.options.persist
            )
        except BaseException:
            store.delete(item.message.id)  # no phantom PENDING record for a message that was never sent
            raise
        if publisher is not None:
            publisher.confirmed([item.message.id])
    else:
        publisher.submit([common.outgoing(item, task.options.persist)])
    finish_enqueue(app, item.message)
    return TaskHandle(app, item.message.id, task.name)


@dataclass(frozen=True)
class Call:
    """One call of a batch: its arguments and its own idempotency key and tags.

    `task.call(...)` builds one with the arguments checked against the task's signature by type checkers.
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    tags: Mapping[str, str] | None = None

    def keyed(self, idempotency_key: str) -> Call:
        """This call with an idempotency key (an item whose key is held returns the holder's handle)."""
        return replace(self, idempotency_key=idempotency_key)


@dataclass
class _Prepared:
    message: Message
    body: bytes
    record: TaskRecord


@dataclass(frozen=True)
class _Common:
    """What every call of one `.apply_async()` or batch shares: times, priority, queue."""

    now: float
    due: float | None
    expires_at: float | None
    priority: int
    queue: str

    @classmethod
    def of(cls, app: Decortask, task: Task[Any, Any], options: CallOptions) -> _Common:
        now = time.time()
        defaults = task.options
        priority = options.priority_or(defaults.priority)  # a bad priority is reported before bad times
        common = cls(
            now=now,
            due=options.due_at(now),
            expires_at=options.expires_at(now, defaults.expires),
            priority=priority,
            queue=options.queue or defaults.queue or app.settings.default_queue,
        )
        app.transport.check_priority(common.queue, priority)  # a quorum queue would ignore it
        return common

    def prepare(
        self,
        app: Decortask,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        where: str,
        lineage: Lineage = NO_LINEAGE,
    ) -> _Prepared:
        """The message (encoded: JSON and size checked) and the record of one call whose arguments fit."""
        options.check_key_and_tags(where)
        idempotency_key = options.idempotency_key
        message = Message(
            id=lineage.task_id or uuid.uuid4().hex,
            task=task.name,
            args=list(args),
            kwargs=kwargs,
            attempt=1,
            eta=self.due,
            expires=self.expires_at,
            created_at=self.now,
            idempotency_key=idempotency_key,
            tags=call_tags(task.options.limits, args, kwargs, options.tags),
            priority=self.priority,
            parent_id=lineage.parent_id,
            root_id=lineage.root_id,
            workflow=lineage.workflow or options.links(app),
            cipher=app.cipher,  # the broker sees only ciphertext; the store keeps the arguments (it is trusted)
        )
        message = prepare_enqueue(app, message)
        body = message.encode(app.settings.max_payload_bytes)
        record = TaskRecord(
            id=message.id,
            name=task.name,
            queue=self.queue,
            status=TaskStatus.SCHEDULED if self.due is not None else TaskStatus.PENDING,
            created_at=self.now,
            updated_at=self.now,
            args=message.args,
            kwargs=message.kwargs,
            tags=message.tags,
            idempotency_key=idempotency_key,
            priority=self.priority,
            persist=task.options.persist,
            scheduled_for=self.due,
            parent_id=lineage.parent_id,
            root_id=lineage.root_id,
            workflow=message.workflow,
        )
        return _Prepared(message, body, record)

    def outbox_entry(self, item: _Prepared, persistent: bool) -> OutboxEntry:
        """The call's outbox entry: the relay publishes it if no publisher confirmed it in time."""
        body = item.body.decode()
        return OutboxEntry(item.message.id, self.queue, self.priority, persistent, body, self.now)

    def outgoing(self, item: _Prepared, persistent: bool) -> Outgoing:
        """The call's message as the background publisher takes it."""
        return Outgoing(item.message.id, item.body, self.queue, self.priority, persistent)

    def schedule_entry(self, item: _Prepared) -> ScheduleEntry:
        assert self.due is not None
        return schedule_entry(item.message, self.queue, self.due, body=item.body)


def send_many(
    app: Decortask, task: Task[Any, Any], calls: Iterable[Call], options: CallOptions = NO_OPTIONS
) -> list[TaskHandle[Any]]:
    """Validate, record and publish many calls of one task: one store write and one publish for all.

    Every call is validated first, exactly as `.delay()` would (arguments, JSON, size): one bad call
    raises before anything is written or sent. Then all records are written in one atomic step, then
    all their messages are published at once (on AMQP with publisher confirms for the whole batch).
    A call whose idempotency key is held gets the holder's handle and publishes nothing.

    Raises:
        BrokerUnavailable: the batch could not be published. Every record the batch wrote is deleted
            again, so none is left PENDING without a message; messages the broker took before it failed
            may still run (a worker recreates a missing record), as with a `.delay()` whose confirm was
            lost. Give the calls idempotency keys to make resending the batch safe.
    """
    from .handle import TaskHandle

    common = _Common.of(app, task, options)
    prepared: list[_Prepared] = []
    for index, call in enumerate(calls):
        if not isinstance(call, Call):
            raise TypeError(
                f"{task.name}: item {index} of the batch is {call!r}, not a Call (use task.call(...))"
            )
        args, kwargs = tuple(call.args), dict(call.kwargs)
        try:
            task.bind_arguments(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"item {index} of the batch: {exc}") from None
        # The batch's options with this call's own key, and its tags over the batch's.
        own = replace(
            options, idempotency_key=call.idempotency_key, tags={**(options.tags or {}), **(call.tags or {})}
        )
        prepared.append(common.prepare(app, task, args, kwargs, own, f"item {index} of the batch: "))
    if not prepared:
        return []
    store = enqueue_store(app)  # the caller's transaction inside app.transaction()
    if common.due is not None:
        # As in send_task: entries first, so a crash in between never leaves a record nothing publishes.
        entries = [common.schedule_entry(item) for item in prepared]
        for entry in entries:
            store.add_schedule(entry)
        stored = store.create_many([item.record for item in prepared])
        held = [e.id for e, s in zip(entries, stored, strict=True) if s.id != e.task_id]
        if held:
            store.remove_schedule(held)
    else:
        persistent = task.options.persist
        publisher = enqueue_publisher(app, options.confirm)
        if publisher is None:
            stored = store.create_many([item.record for item in prepared])
        else:
            app.transport.check_queue(common.queue)
            outbox = [common.outbox_entry(item, persistent) for item in prepared]
            stored = cast(OutboxStore, store).create_outboxed([item.record for item in prepared], outbox)
        fresh = [item for item, s in zip(prepared, stored, strict=True) if s.id == item.message.id]
        if publisher is None or options.confirm:
            try:
                app.transport.publish_many(
                    [(item.body, common.queue, common.priority, None) for item in fresh],
                    persistent=persistent,
                )
            except BaseException:
                for item in fresh:  # no PENDING record is left for a message that may never have been sent
                    store.delete(item.message.id)
                raise
            if publisher is not None:
                publisher.confirmed([item.message.id for item in fresh])
        else:
            publisher.submit([common.outgoing(item, persistent) for item in fresh])
    for item, s in zip(prepared, stored, strict=True):
        if s.id == item.message.id:
            finish_enqueue(app, item.message)
    handles: list[TaskHandle[Any]] = [TaskHandle(app, s.id, s.name) for s in stored]
    if app.eager_runner is not None:  # `decortask.testing.eager()`: run them now, as `.delay()` does
        for handle in handles:
            app.eager_runner(handle)
    return handles
