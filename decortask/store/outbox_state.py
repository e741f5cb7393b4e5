"""What the outbox keeps in the store: the message of every task `.delay()` recorded, until it is settled.

`.delay()` writes a task's record and its outbox entry (the encoded message, its queue and priority) in one
atomic step, then hands the message to a background publisher (`outbox.py`) and returns. The entry's
`look_at` says when the relay (`relay.py`) next looks at it:

- unpublished: `look_at` is the record's time plus `relay_after`; if the publisher has not marked it
  published by then (the producer died, the broker was down), the relay publishes it;
- published (`mark_published`): `look_at` moves `republish_after` ahead; the relay then checks that the
  task was consumed (its record left PENDING or counts a delivery) and drops the entry, or republishes the
  message a broker lost (once per `republish_after`).

So the table holds the tasks of about the last `republish_after` seconds, plus those still waiting.
Every backend (memory, SQLite, Redis) implements `OutboxStore`; tests/test_outbox.py checks each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..states import TaskStatus
from .base import TaskRecord


@dataclass(frozen=True)
class OutboxEntry:
    """One task's message as `.delay()` encoded it, waiting to be published (or checked) by the relay.

    Attributes:
        task_id: the task (and message) id.
        queue: where the message goes.
        priority: decortask priority 0..9.
        persistent: a persistent message (`persist=True` tasks) or a transient one.
        body: the encoded message, exactly as first published (encrypted arguments stay encrypted).
        look_at: when the relay should look at the entry next (UNIX seconds).
    """

    task_id: str
    queue: str
    priority: int
    persistent: bool
    body: str
    look_at: float


@dataclass(frozen=True)
class OutboxItem:
    """An entry the relay looks at, with what the store knows of its task right now.

    Attributes:
        published: whether the message was confirmed by the broker (by the publisher or the relay).
        status, attempt, deliveries: the task's record; `status` is None when the record is gone.
    """

    entry: OutboxEntry
    published: bool
    status: TaskStatus | None
    attempt: int = 0
    deliveries: int = 0

    @property
    def waiting(self) -> bool:
        """Whether the task still waits for its first run: PENDING, never started, never delivered."""
        return self.status is TaskStatus.PENDING and self.attempt == 0 and self.deliveries == 0


@runtime_checkable
class OutboxStore(Protocol):
    """The outbox's part of a store; every store backend implements it."""

    def create_outboxed(
        self, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        """`create_many`, and the outbox entry of each record it inserts, in the same atomic step.

        `entries[i]` belongs to `records[i]`; a record whose idempotency key is held inserts nothing, so
        its entry is not written either.
        """
        ...

    def mark_published(self, task_ids: Sequence[str], look_at: float) -> None:
        """Mark these entries published and move their next look to `look_at`; unknown ids are skipped."""
        ...

    def outbox_due(self, now: float, limit: int) -> list[OutboxItem]:
        """Up to `limit` entries whose `look_at` is at or before `now`, the earliest first."""
        ...

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        """Drop these entries (their tasks were consumed, or their records are gone)."""
        ...


def item_of(entry: OutboxEntry, published: bool, record: TaskRecord | None) -> OutboxItem:
    """The `OutboxItem` of `entry` with the state of its task's `record` (None: gone)."""
    if record is None:
        return OutboxItem(entry, published, None)
    return OutboxItem(entry, published, record.status, record.attempt, record.deliveries)
