"""In-process store for tests and `memory://`: the reference behaviour for the other backends."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import StoreError
from ..states import TERMINAL
from .base import (
    LogLine,
    ScheduleEntry,
    TaskQuery,
    TaskRecord,
    TaskStore,
    TransitionStep,
    apply_transition,
    matches,
    ordered,
    running_at,
)
from .follow_state import MemoryFollow
from .memory_limits import MemoryLimits
from .memory_spawn import MemorySpawn
from .outbox_state import OutboxEntry, OutboxItem, OutboxStore, item_of
from .outcome_waiters import OutcomeNotices
from .periodic_state import PeriodicStateStore, ScheduleState
from .workflow_state import WorkflowStore, join_ids


class MemoryStore(
    TaskStore, PeriodicStateStore, OutboxStore, WorkflowStore, MemoryLimits, MemorySpawn, MemoryFollow
):
    """A dict behind one lock. Records are deep-copied in and out so callers never share state."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._records: dict[str, TaskRecord] = {}
        self._keys: dict[str, str] = {}
        self._schedule: dict[str, ScheduleEntry] = {}
        self._claims: dict[str, float] = {}
        self._claimers: dict[str, str] = {}  # entry id -> the owner of its claim
        self._heartbeats: dict[str, float] = {}
        self._stopped_workers: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._periodic: dict[str, ScheduleState] = {}
        self._outbox: dict[str, tuple[OutboxEntry, bool]] = {}  # task id -> (entry, published)
        self._joins: dict[str, set[int]] = {}  # workflow join id -> members that ended
        #: Waiters for outcomes, woken by `apply_step` as it writes a terminal status.
        self.outcome_notices = OutcomeNotices()

    def create(self, record: TaskRecord) -> TaskRecord:
        with self._lock:
            if record.id in self._records:
                raise StoreError(f"task {record.id} already exists; task ids must be unique")
            key = record.idempotency_key
            if key is not None:
                holder = self._records.get(self._keys.get(key, ""))
                if holder is not None and holder.holds_idempotency_key:
                    return _copy(holder)
                self._keys[key] = record.id
            self._records[record.id] = _copy(record)
            return _copy(record)

    def create_many(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        with self._lock:  # re-entrant: `create` takes it again for each record
            ids = [record.id for record in records]
            taken = [task_id for task_id in ids if task_id in self._records]
            if taken or len(set(ids)) != len(ids):
                first = taken[0] if taken else "of the batch"
                raise StoreError(f"task {first} already exists; task ids must be unique")
            return [self.create(record) for record in records]

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            record = self._records.get(task_id)
            return _copy(record) if record is not None else None

    def delete(self, task_id: str) -> None:
        with self._lock:
            record = self._records.pop(task_id, None)
            key = record.idempotency_key if record is not None else None
            if key is not None and self._keys.get(key) == task_id:
                del self._keys[key]

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        with self._lock:
            current = self._records.get(step.task_id)
            if current is None:
                return None
            now = time.time()
            updated = apply_transition(current, step, now)
            if step.log_lines:  # appended whether or not the compare-and-set holds (TransitionStep)
                current.logs = [*current.logs, *copy.deepcopy(step.log_lines)]
            if updated is None:
                return None
            if step.log_lines:
                updated.logs = current.logs
            # Stored as a copy: `changes` (a result, say) are the caller's objects.
            self._records[step.task_id] = _copy(updated)
            self._follow_mark(updated, now)  # with the outcome: follow_state.py
            schedule = step.schedule
            if schedule is not None:
                self._schedule[schedule.id] = schedule
                self._claims.pop(schedule.id, None)
        if updated.status.terminal:
            self.outcome_notices.notify(step.task_id)
        return updated

    def wait_for_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        return self.outcome_notices.wait(task_id, timeout, self.get)

    async def await_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        return await self.outcome_notices.await_outcome(task_id, timeout, self.get)

    def append_log(self, task_id: str, line: LogLine) -> None:
        with self._lock:
            record = self._records.get(task_id)
            if record is not None:
                record.logs.append(copy.deepcopy(line))  # its `extra` is the caller's dict

    def append_logs(self, task_id: str, lines: Sequence[LogLine]) -> None:
        """Append several lines of one task at once (captured output, `capture.py`)."""
        with self._lock:
            record = self._records.get(task_id)
            if record is not None:
                record.logs.extend(copy.deepcopy(list(lines)))

    def set_running_fields(
        self, task_id: str, fields: dict[str, Any], log_lines: Sequence[LogLine], attempt: int | None
    ) -> None:
        with self._lock:
            record = self._records.get(task_id)
            if record is not None:
                record.logs.extend(copy.deepcopy(list(log_lines)))
                if running_at(record, attempt):
                    for name, value in fields.items():
                        setattr(record, name, copy.deepcopy(value))  # not the caller's object

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        with self._lock:
            found = ordered((r for r in self._records.values() if matches(r, query)), query.order)
        return [_copy(r) for r in found[query.offset : query.offset + query.limit]]

    def count_tasks(self, query: TaskQuery) -> int:
        with self._lock:
            return sum(1 for r in self._records.values() if matches(r, query))

    def add_schedule(self, entry: ScheduleEntry) -> None:
        with self._lock:
            self._schedule[entry.id] = entry
            self._claims.pop(entry.id, None)
            self._claimers.pop(entry.id, None)

    def claim_due(self, now: float, limit: int, owner: str, lease: float) -> list[ScheduleEntry]:
        with self._lock:
            due = sorted(
                (
                    e
                    for e in self._schedule.values()
                    if e.due_at <= now and self._claims.get(e.id, 0.0) <= now
                ),
                key=lambda e: e.due_at,
            )[:limit]
            for entry in due:
                self._claims[entry.id] = now + lease
                self._claimers[entry.id] = owner
            return due

    def remove_schedule(self, entry_ids: Sequence[str], *, claimed_by: str | None = None) -> None:
        with self._lock:
            for entry_id in entry_ids:
                if claimed_by is not None and self._claimers.get(entry_id) != claimed_by:
                    continue
                self._schedule.pop(entry_id, None)
                self._claims.pop(entry_id, None)
                self._claimers.pop(entry_id, None)

    def count_schedule(self, queues: Iterable[str] | None = None) -> int:
        wanted = set(queues) if queues is not None else None
        with self._lock:
            return sum(1 for e in self._schedule.values() if wanted is None or e.queue in wanted)

    def next_due(self, queues: Iterable[str] | None = None) -> float | None:
        wanted = set(queues) if queues is not None else None
        with self._lock:
            dues = [e.due_at for e in self._schedule.values() if wanted is None or e.queue in wanted]
        return min(dues) if dues else None

    def heartbeat(self, worker_id: str, now: float) -> None:
        with self._lock:
            self._heartbeats[worker_id] = now

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._lock:
            return self._heartbeats.get(worker_id)

    def heartbeats(self) -> dict[str, float]:
        with self._lock:
            return dict(self._heartbeats)

    def worker_stopped(self, worker_id: str, now: float) -> None:
        with self._lock:
            self._stopped_workers[worker_id] = now

    def stopped_workers(self) -> dict[str, float]:
        with self._lock:
            return dict(self._stopped_workers)

    def purge_expired(self, now: float) -> int:
        with self._lock:
            gone = [
                r.id
                for r in self._records.values()
                if r.status in TERMINAL and r.expires_at is not None and r.expires_at <= now
            ]
            for task_id in gone:
                for join_id in join_ids(self._records[task_id].workflow):  # the joins go with it
                    self._joins.pop(join_id, None)
                self.delete(task_id)
            return len(gone)

    # -- workflow joins (workflow_state.py) -----------------------------------------------------------------

    def join_member(self, join_id: str, member: int) -> int:
        with self._lock:
            ended = self._joins.setdefault(join_id, set())
            ended.add(member)
            return len(ended)

    # -- outbox (outbox_state.py) ---------------------------------------------------------------------------

    def create_outboxed(
        self, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        with self._lock:
            stored = self.create_many(records)
            for record, entry, kept in zip(records, entries, stored, strict=True):
                if kept.id == record.id:
                    self._outbox[record.id] = (entry, False)
            return stored

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        with self._lock:
            for task_id in task_ids:
                found = self._outbox.get(task_id)
                if found is not None:
                    self._outbox[task_id] = (dataclasses.replace(found[0], since=now), True)

    def outbox_due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        with self._lock:
            due = sorted(
                (
                    (entry, published)
                    for entry, published in self._outbox.values()
                    if entry.since <= (published_since if published else unpublished_since)
                ),
                key=_since,
            )
            return [
                item_of(entry, published, self._records.get(entry.task_id))
                for entry, published in due[:limit]
            ]

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._outbox.pop(task_id, None)

    def outbox_add(self, entries: Sequence[OutboxEntry]) -> None:
        with self._lock:
            for entry in entries:
                self._outbox[entry.task_id] = (entry, True)

    def close(self) -> None:
        return None

    # -- periodic tasks ------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        with self._lock:
            holder, until = self._leases.get(name, ("", 0.0))
            if holder and holder != owner and until > now:
                return False
            self._leases[name] = (owner, now + ttl)
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._lock:
            if self._leases.get(name, ("", 0.0))[0] == owner:
                del self._leases[name]

    def lease_owner(self, name: str, now: float) -> str | None:
        with self._lock:
            holder, until = self._leases.get(name, ("", 0.0))
            return holder if holder and until > now else None

    def schedule_state(self, name: str) -> ScheduleState | None:
        with self._lock:
            return self._periodic.get(name)

    def schedule_states(self) -> list[ScheduleState]:
        with self._lock:
            return [self._periodic[name] for name in sorted(self._periodic)]

    def advance_schedule(self, name: str, slot: float) -> ScheduleState:
        with self._lock:
            state = self._periodic.get(name, ScheduleState(name))
            if state.last_slot is None or slot > state.last_slot:
                state = ScheduleState(name, slot, state.paused)
            self._periodic[name] = state
            return state

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        with self._lock:
            state = ScheduleState(name, self._periodic.get(name, ScheduleState(name)).last_slot, paused)
            self._periodic[name] = state
            return state


def _since(pair: tuple[OutboxEntry, bool]) -> float:
    return pair[0].since


def _copy(record: TaskRecord) -> TaskRecord:
    """A copy sharing nothing mutable with `record`, nested values included.

    The other stores hand out freshly parsed records, so a caller changing one (even `args[0]["key"]`) never
    changes what is stored; records here live as objects and must be copied in and out to behave the same.
    """
    return copy.deepcopy(record)
