"""Publishes delayed work (countdown, eta, retry delays) when it falls due.

Delayed work is never held unacked in a worker's memory: it waits in the store's schedule, and every
worker runs this loop. Claims are atomic with a lease, so two workers never publish one entry at once;
a worker that dies mid-publish lets its lease lapse and another one publishes the entry (the receipt
rules turn a rare double publish into a skipped duplicate). What it published gets an outbox entry, so the
relay republishes a message the broker then loses, as it does for `.delay()`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import clock
from .outbox import watch_published
from .states import TaskStatus
from .store.outbox_state import OutboxEntry

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.scheduler")

CLAIM_LEASE = 30.0
BATCH = 200


class Scheduler:
    """One worker's view of the shared schedule."""

    def __init__(self, app: Decortask, owner: str) -> None:
        self.app = app
        self.owner = owner

    def tick(self, now: float | None = None) -> int:
        """Publish every entry due by `now`; returns how many were published."""
        store = self.app.store
        now = clock.now() if now is None else now
        published = 0
        while True:
            entries = store.claim_due(now, BATCH, self.owner, CLAIM_LEASE)
            if not entries:
                return published
            items = []
            done_ids = []
            published_entries = []
            for entry in entries:
                record = store.get(entry.task_id)
                if record is not None and record.status.terminal:
                    # Cancelled (or otherwise settled) while it waited: nothing to publish. Anything else is
                    # published; the receipt rules skip a delivery that turned out stale.
                    done_ids.append(entry.id)
                    continue
                items.append((entry.body.encode(), entry.queue, entry.priority, None))
                published_entries.append(entry)
                done_ids.append(entry.id)
            if items:
                self.app.transport.publish_many(items)
                watch_published(
                    self.app,
                    [
                        OutboxEntry(e.task_id, e.queue, e.priority, True, e.body, now)
                        for e in published_entries
                    ],
                )
            for entry in entries:
                store.transition(
                    entry.task_id,
                    TaskStatus.PENDING,
                    expect={TaskStatus.SCHEDULED, TaskStatus.RETRYING},
                    scheduled_for=None,
                )
            # Only what this claim still holds: a receiver whose clock puts the eta still ahead may have parked
            # the published message again under the same id (receipt.py), and that entry must stay.
            store.remove_schedule(done_ids, claimed_by=self.owner)
            published += len(items)
            if len(entries) < BATCH:
                return published
