"""What the outbox keeps in the store: the message of every task `.delay()` recorded, until it is settled.

`.delay()` writes a task's record and its outbox entry (the encoded message, its queue and priority) in one
atomic step, then hands the message to a background publisher (`outbox.py`) and returns. The entry's
`since` is when it was written, or last published; the relay (`relay.py`) looks at it with its own
settings:

- unpublished for `relay_after`: the publisher has not marked it published (the producer died, the
  broker was down), so the relay publishes it;
- published `republish_after` ago (`mark_published` moves `since`): the relay checks that the task was
  consumed (its record left PENDING or started the message's attempt) and drops the entry, or
  republishes the message a broker lost (once per `republish_after`, since publishing moves `since` again).

The scheduler adds an entry, as published, for each delayed message it publishes (`outbox_add`): the
relay watches those the same way.

So the table holds the tasks of about the last `republish_after` seconds, plus those still waiting.
Every backend (memory, SQLite, Redis) implements `OutboxStore`; tests/test_outbox.py checks each of them.
"""

from __future__ import annotations

import json
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
        since: when the entry was written, or last published or looked at by the relay (UNIX seconds).
    """

    task_id: str
    queue: str
    priority: int
    persistent: bool
    body: str
    since: float


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
        """Whether the task still waits for the entry's message: PENDING, and the attempt before the
        message's is the last one it started (so the message was never consumed).

        A first attempt's record is at attempt 0; a retry's or a requeued attempt's (published by the
        scheduler) at the attempt that failed or was interrupted, whose deliveries it may still count.
        """
        return self.status is TaskStatus.PENDING and self.attempt == message_attempt(self.entry.body) - 1


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

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        """Mark these entries published at `now` (their `since`); unknown ids are skipped."""
        ...

    def outbox_due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        """Up to `limit` entries, oldest `since` first: unpublished ones whose `since` is at or before
        `unpublished_since`, and published ones whose `since` is at or before `published_since`."""
        ...

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        """Drop these entries (their tasks were consumed, or their records are gone)."""
        ...

    def outbox_add(self, entries: Sequence[OutboxEntry]) -> None:
        """Write entries for messages already published at their `since`, replacing a task's older entry.

        The scheduler's: a countdown's or a retry's message, so the relay republishes it if a broker
        loses it, as it does for `.delay()`'s.
        """
        ...


def message_attempt(body: str) -> int:
    """The `attempt` of an encoded message (1 when it cannot be read: the envelope's default)."""
    try:
        attempt = json.loads(body).get("attempt", 1)
    except (ValueError, AttributeError):
        return 1
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1


def item_of(entry: OutboxEntry, published: bool, record: TaskRecord | None) -> OutboxItem:
    """The `OutboxItem` of `entry` with the state of its task's `record` (None: gone)."""
    if record is None:
        return OutboxItem(entry, published, None)
    return OutboxItem(entry, published, record.status, record.attempt, record.deliveries)
