"""A delivery of a task with limits: take a concurrency slot and a rate start, or wait in the schedule.

The one place where a worker applies a task's `rate_limit` and `concurrency_limit` (options: `limits.py`,
store side: `store/limit_state.py`). `delivery.process_delivery` hands every delivery here; one of a task
without limits goes straight to the executor. A delivery over a limit never sleeps in its pool slot and
never uses an attempt: its message is parked in the store's schedule (the mechanism of countdown and
retries), the record says why (`SCHEDULED`, reason `rate_limited` / `concurrency_limited`), and the
delivery is acked. A concurrency slot is held from before the claim until the attempt's outcome is
written, whatever the outcome, and is tied to its worker's liveness: the leases of workers the executor's
`owner_alive` finds dead are evicted when the slots are full, so a SIGKILLed holder frees its place within
`lease_timeout`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING

from .errors import StoreError
from .limits import Limits, rate_buckets, slot_bucket
from .outcomes import Outcome, Reason, Settle
from .receipt import ETA_TOLERANCE
from .records import schedule_entry
from .security import mask_text
from .states import TaskStatus
from .store.limit_state import LimitStore

if TYPE_CHECKING:
    from .app import Decortask
    from .executor import Executor
    from .message import Message

logger = logging.getLogger("decortask.worker")

#: A delivery finding every concurrency slot held waits this long (give or take half) before trying again.
SLOT_RETRY = 0.5


def execute_within_limits(app: Decortask, executor: Executor, message: Message, queue: str) -> Outcome:
    """Execute `message` (`Executor.execute`) once its task's limits allow it to start; else park it."""
    task = app.registry.find(message.task)
    limits = task.options.limits if task is not None else None
    store = app.store
    now = executor.clock()
    if (
        limits is None
        or not isinstance(store, LimitStore)
        or (message.expires is not None and message.expires <= now)  # the receipt rules settle these two
        or (message.eta is not None and message.eta > now + ETA_TOLERANCE)
    ):
        return executor.execute(message, queue)
    bucket = slot_bucket(message.task, message.tags) if limits.concurrency else None
    if bucket is not None and not _take_slot(app, executor, store, bucket, limits, message.id):
        due = time.time() + SLOT_RETRY * random.uniform(0.5, 1.5)
        return _park(app, executor, message, queue, due, Reason.CONCURRENCY_LIMITED)
    try:
        if limits.rates:
            # A parked attempt comes back when the scheduler next looks (every scheduler_interval): it is
            # published half an interval early, and let in early if the windows have room by then.
            lag = app.settings.scheduler_interval / 2
            buckets = rate_buckets(message.task, limits, message.tags, lag)
            member, asked = f"{message.id}:{message.attempt}", time.time()
            start = executor.write(lambda: store.reserve_rate(member, buckets, asked, lag))
            if start > asked:
                due = max(asked, start - lag)
                return _park(app, executor, message, queue, due, Reason.RATE_LIMITED)
        return executor.execute(message, queue)
    finally:
        if bucket is not None:
            _release(store, bucket, message.id)


def _take_slot(
    app: Decortask, executor: Executor, store: LimitStore, bucket: str, limits: Limits, holder: str
) -> bool:
    """Take a slot; when none is free, evict the leases of dead workers (and of ended tasks) and retry."""
    limit, owner = limits.concurrency or 1, executor.worker_id
    if executor.write(lambda: store.acquire_slot(bucket, holder, owner, limit, time.time())):
        return True
    stale = []
    for lease in executor.write(lambda: store.slot_holders(bucket)):
        if not executor.owner_alive(lease.owner):
            stale.append(lease)
        elif time.time() - lease.since > app.settings.lease_timeout:
            # A live worker's lease its task no longer runs under: a release that never landed (a
            # process-pool child stopped by force). Only past the lease timeout, since a slot is taken
            # a moment before its task's claim.
            record = executor.write(lambda: app.store.get(lease.holder))  # noqa: B023 (called at once)
            if record is None or record.status is not TaskStatus.RUNNING:
                stale.append(lease)
    for lease in stale:
        logger.info(
            "task %s's concurrency slot on %s was freed: its worker is gone", lease.holder, lease.owner
        )
        executor.write(lambda: store.release_slot(bucket, lease.holder, lease.owner))  # noqa: B023
    return bool(stale) and executor.write(
        lambda: store.acquire_slot(bucket, holder, owner, limit, time.time())
    )


def _release(store: LimitStore, bucket: str, holder: str) -> None:
    try:
        store.release_slot(bucket, holder)
    except StoreError as exc:
        # The lease stays until it is found stale (its worker dead, or its task no longer running).
        logger.warning("could not release task %s's concurrency slot (%s)", holder, mask_text(str(exc)))


def _park(
    app: Decortask, executor: Executor, message: Message, queue: str, due: float, reason: Reason
) -> Outcome:
    """Put the delivery in the store's schedule until `due` (same attempt) and say so on the record.

    A delivery that may not run anyway (its task ended, or a later attempt exists) goes to the executor,
    whose receipt rules settle it.
    """
    store = app.store
    nxt = dataclasses.replace(message, eta=due)
    # An entry of its own each time: the scheduler removes the entry it published after publishing it,
    # by which time this delivery may have come back and been parked again.
    slot = f"{message.attempt}.{reason}.{uuid.uuid4().hex[:8]}"
    entry = schedule_entry(nxt, queue, due, slot=slot)
    parked = executor.write(
        lambda: store.transition(
            message.id,
            TaskStatus.SCHEDULED,
            expect={TaskStatus.PENDING},
            expect_attempt=message.attempt - 1,
            schedule=entry,
            scheduled_for=due,
            reason=str(reason),
        )
    )
    if parked is None:
        record = executor.write(lambda: store.get(message.id))
        if record is None or record.status.terminal or record.attempt >= message.attempt + 1:
            return executor.execute(message, queue)
        executor.write(lambda: store.add_schedule(entry))  # SCHEDULED or RETRYING already: it waits as it is
    logger.debug("task %s %s: parked for %.2f s", message.id, reason, due - time.time())
    return Outcome(Settle.ACK, TaskStatus.SCHEDULED, reason, task_id=message.id, task_name=message.task)
