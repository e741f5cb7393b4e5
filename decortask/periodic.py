"""Periodic tasks: every worker may lead a schedule, and each of its slots runs exactly once.

Schedules come from `@task(schedule=...)` and the `schedules` setting (`periodic_config.py`). Each worker
with the `periodic` setting on ticks a `PeriodicScheduler` from its loop. For each schedule it knows, the
scheduler tries to hold the schedule's store lease (`periodic:NAME`, `LEASE_TTL` seconds, renewed every
`RENEW_INTERVAL`); the holder leads the schedule and publishes its due slots. A killed leader's lease
lapses within `LEASE_TTL` and another worker takes over from the last slot the store says was published.

Exactly one run per slot does not rest on the lease (two workers may both think they lead for a moment):
a slot's task has a deterministic id (`slot_task_id`), so the store holds at most one record per slot on
every backend, whatever happened to an earlier run of it (even a quick FAILED one, whose idempotency key
is free again). A slot is recorded, then published, then the schedule's last slot moves past it. A leader
that dies in between leaves a PENDING record and an unmoved last slot: the next leader publishes that
record's message again, and the worker's claim compare-and-set makes a second copy of it harmless.

Missed slots (no worker published them within the schedule's `grace`): the schedule's policy picks `last`
(the newest missed slot runs once), `all` or `none`; always logged. A paused schedule's slots are skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING

from . import clock
from .errors import StoreError
from .message import Message
from .middleware import finish_enqueue, prepare_enqueue
from .outbox import watch_published
from .periodic_config import PeriodicEntry, declared_entries
from .records import message_from_record, record_from_message
from .schedules import next_slot, slot_time, slots_between
from .states import TaskStatus
from .store.base import TaskRecord
from .store.outbox_state import OutboxEntry
from .store.periodic_state import PeriodicStateStore, ScheduleState, periodic_state

if TYPE_CHECKING:
    from .app import Decortask
    from .task import Task

logger = logging.getLogger("decortask.periodic")

#: Seconds a leader's lease lasts without renewal: how long a killed leader's schedules wait for another.
LEASE_TTL = 4.0
#: Seconds between lease renewals (and re-reads of each schedule's state, such as a pause).
RENEW_INTERVAL = 1.0
#: Most slots one schedule publishes per tick (a long backlog under `missed="all"` goes on next tick).
BATCH = 100
_SLOT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "decortask:periodic")


def slot_task_id(schedule_name: str, slot: float) -> str:
    """The id of the task that runs `slot` of the schedule: the same in every worker, so one per slot."""
    return uuid.uuid5(_SLOT_NAMESPACE, f"{schedule_name}@{slot_time(slot)}").hex


def lease_name(schedule_name: str) -> str:
    """The store lease whose holder leads the schedule."""
    return f"periodic:{schedule_name}"


class PeriodicScheduler:
    """One worker's part in running the periodic schedules; `tick(now)` does everything that is due.

    Args:
        app: the app whose registry, settings and store to use.
        owner: this worker's id (the lease holder's name).
        lease_ttl: seconds a lease lasts without renewal.
        renew_interval: seconds between lease renewals.
    """

    def __init__(
        self,
        app: Decortask,
        owner: str,
        *,
        lease_ttl: float = LEASE_TTL,
        renew_interval: float = RENEW_INTERVAL,
    ) -> None:
        self.app = app
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.renew_interval = renew_interval
        self.enabled = app.settings.periodic
        self._entries: list[PeriodicEntry] | None = None
        #: Schedules this worker leads, with the time its lease runs out.
        self._leading: dict[str, float] = {}
        self._states: dict[str, ScheduleState] = {}
        self._next_renew = 0.0

    @property
    def entries(self) -> list[PeriodicEntry]:
        """The schedules this worker takes part in: those whose task it has registered."""
        if self._entries is None:
            entries = []
            for entry in declared_entries(self.app):
                if entry.task in self.app.registry:
                    try:
                        self.app.registry.get(entry.task).bind_arguments(tuple(entry.args), entry.kwargs)
                    except TypeError as exc:
                        logger.error("schedule %s is not run: its arguments do not fit: %s", entry.name, exc)
                        continue
                    entries.append(entry)
                else:
                    logger.warning(
                        "schedule %s: task %s is not registered in this worker, so it leaves the schedule to "
                        "workers that have it (-A naming its module)",
                        entry.name,
                        entry.task,
                    )
            self._entries = entries
        return self._entries

    def leading(self) -> list[str]:
        """Names of the schedules this worker leads now."""
        return sorted(self._leading)

    def tick(self, now: float | None = None) -> int:
        """Renew leases when due, then publish every due slot of the schedules led; returns how many."""
        if not self.enabled or not self.entries:
            return 0
        now = clock.now() if now is None else now
        store = periodic_state(self.app.store)
        if now >= self._next_renew:
            self._renew(store, now)
            self._next_renew = now + self.renew_interval
        published = 0
        for entry in self.entries:
            until = self._leading.get(entry.name)
            if until is not None and now < until:  # past it another worker may lead already
                published += self._publish_due(store, entry, now)
        return published

    def close(self) -> None:
        """Give up every lease held, so other workers take the schedules over at once; later ticks do nothing.

        The worker calls it when its shutdown begins: a SIGTERMed leader's schedules then move to another
        worker at that worker's next renewal (`renew_interval`) instead of once the lease lapses.
        """
        self.enabled = False  # the shutdown's last tick must not take the leases back
        if not self._leading:
            return
        store = periodic_state(self.app.store)
        for name in list(self._leading):
            store.release_lease(lease_name(name), self.owner)
            logger.info("schedule %s: this worker %s is stopping and hands it over", name, self.owner)
        self._leading.clear()

    # -- leadership ----------------------------------------------------------------------------------------

    def _renew(self, store: PeriodicStateStore, now: float) -> None:
        for entry in self.entries:
            name = entry.name
            if not store.acquire_lease(lease_name(name), self.owner, self.lease_ttl, now):
                if self._leading.pop(name, None) is not None:
                    logger.info("schedule %s: another worker leads it now", name)
                continue
            state = store.schedule_state(name)
            if state is None or state.last_slot is None:
                # A new schedule starts with its next slot, never with the past.
                start = entry.schedule.last_at_or_before(now)
                state = store.advance_schedule(name, start if start is not None else now)
                logger.info(
                    "schedule %s (%s): first slot %s",
                    name,
                    entry.schedule.describe(),
                    slot_time(next_slot(entry.schedule, now)),
                )
            if name not in self._leading:
                logger.info("schedule %s: this worker %s leads it now", name, self.owner)
            self._leading[name] = now + self.lease_ttl
            self._states[name] = state

    # -- slots ---------------------------------------------------------------------------------------------

    def _publish_due(self, store: PeriodicStateStore, entry: PeriodicEntry, now: float) -> int:
        schedule, name = entry.schedule, entry.name
        state = self._states[name]
        last = state.last_slot if state.last_slot is not None else now
        if next_slot(schedule, last) > now:
            return 0
        if state.paused:
            newest = schedule.last_at_or_before(now)
            if newest is not None and newest > last:
                logger.info("schedule %s is paused: slot %s skipped", name, slot_time(newest))
                self._states[name] = store.advance_schedule(name, newest)
            return 0
        missed_until = now - schedule.grace
        slots: list[float] = []
        if next_slot(schedule, last) <= missed_until:
            slots = self._missed(store, entry, last, missed_until)
            if len(slots) >= BATCH:  # a long backlog (missed="all"): the rest on the next ticks
                return self._publish_slots(store, entry, slots, now)
            last = max(last, missed_until)
        slots += slots_between(schedule, last, now, BATCH)
        return self._publish_slots(store, entry, slots, now)

    def _missed(
        self, store: PeriodicStateStore, entry: PeriodicEntry, last: float, missed_until: float
    ) -> list[float]:
        """The missed slots in (last, missed_until] that the schedule's policy runs; logs the decision."""
        schedule, name = entry.schedule, entry.name
        newest = schedule.last_at_or_before(missed_until)
        assert newest is not None and newest > last
        some = slots_between(schedule, last, missed_until, BATCH)
        count = f"{len(some)}" if len(some) < BATCH else f"{BATCH} or more"
        span = f"from {slot_time(some[0])} to {slot_time(newest)}"
        if schedule.missed == "all":
            logger.warning("schedule %s: %s slots missed %s; missed='all': running each", name, count, span)
            return some
        if schedule.missed == "last":
            logger.warning(
                "schedule %s: %s slots missed %s; missed='last': running the last one once", name, count, span
            )
            return [newest]
        logger.warning("schedule %s: %s slots missed %s; missed='none': skipping them", name, count, span)
        self._states[name] = store.advance_schedule(name, newest)
        return []

    def _publish_slots(
        self, store: PeriodicStateStore, entry: PeriodicEntry, slots: list[float], now: float
    ) -> int:
        for slot in slots:
            self._publish_slot(entry, slot, now)
            # Moved past only once published: a leader dying before this leaves the slot to the next one.
            self._states[entry.name] = store.advance_schedule(entry.name, slot)
        return len(slots)

    def _publish_slot(self, entry: PeriodicEntry, slot: float, now: float) -> None:
        app, store = self.app, self.app.store
        task = app.registry.get(entry.task)
        task_id = slot_task_id(entry.name, slot)
        queue = entry.queue or task.options.queue or app.settings.default_queue
        record = store.get(task_id)
        if record is None:
            message, record = self._slot_call(entry, task, task_id, slot, queue, now)
            created = True
            try:
                stored = store.create(record)
            except StoreError:
                # Another leader recorded the slot first (its id is taken), or the store failed.
                existing = store.get(task_id)
                if existing is None:
                    raise
                stored, created = existing, False
            if stored.id != task_id:
                logger.warning(
                    "schedule %s: slot %s not published: its idempotency key is held by task %s",
                    entry.name,
                    slot_time(slot),
                    stored.id,
                )
                return
            if created:
                self._publish(message, queue, task)
                logger.debug(
                    "schedule %s: slot %s published as task %s", entry.name, slot_time(slot), task_id
                )
                return
            record = stored
        if record.status is TaskStatus.PENDING:
            # Recorded by a leader that may have died before publishing it: publish it (again). A second
            # copy of a message already sent is skipped by the worker's claim compare-and-set.
            message = message_from_record(record, app.cipher)  # attempt 1: the record is at 0
            self._publish(message, record.queue, task)
            logger.info(
                "schedule %s: slot %s was recorded but maybe not published; published task %s",
                entry.name,
                slot_time(slot),
                task_id,
            )

    def _slot_call(
        self, entry: PeriodicEntry, task: Task[..., object], task_id: str, slot: float, queue: str, now: float
    ) -> tuple[Message, TaskRecord]:
        """The message and PENDING record of one slot's task (as the producer builds a `.delay()`'s)."""
        when = slot_time(slot)
        expires = task.options.expires
        message = Message(
            id=task_id,
            task=task.name,
            args=list(entry.args),
            kwargs=dict(entry.kwargs),
            attempt=1,
            expires=now + expires if expires is not None else None,
            created_at=now,
            idempotency_key=f"periodic:{entry.name}@{when}",
            tags={"periodic": entry.name, "slot": when},
            priority=task.options.priority,
            cipher=self.app.cipher,
        )
        message = prepare_enqueue(self.app, message)
        record = dataclasses.replace(
            record_from_message(message, queue), updated_at=now, persist=task.options.persist
        )
        return message, record

    def _publish(self, message: Message, queue: str, task: Task[..., object]) -> None:
        body = message.encode(self.app.settings.max_payload_bytes)
        self.app.transport.publish(body, queue, priority=message.priority, persistent=task.options.persist)
        entry = OutboxEntry(
            message.id, queue, message.priority, task.options.persist, body.decode(), clock.now()
        )
        watch_published(self.app, [entry])  # a run the broker then loses is republished by the relay
        finish_enqueue(self.app, message)
