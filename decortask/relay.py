"""The outbox relay: publishes messages no producer got confirmed, and republishes those a broker lost.

Every worker runs a relay thread; one at a time does the work, the holder of the store lease `outbox-relay`
(the lease primitive of periodic tasks, `store/periodic_state.py`), so a killed holder is replaced once its
lease lapses. Every `relay_interval` the holder reads the outbox entries that are due (`outbox_state.py`):

- an entry of a task that left PENDING, started or was delivered is done: it is removed;
- an entry no publisher marked published within `relay_after` (its producer died before its background
  publisher ran, or the broker was down) is published now, and logged per queue;
- an entry published `republish_after` ago whose task still waits, never delivered, had its message lost
  by the broker (a Redis restarted without persistence) or is still queued behind a long backlog. Its
  queue's ready count tells them apart: when the queue holds fewer messages than such tasks of the batch,
  they are all published again with one WARNING line naming how many and the queue; otherwise the backlog
  is legitimate and nothing is doubled. Either way the entry is looked at again `republish_after` later,
  so each is republished at most once per period.

Workers on an embedded broker (`sqlite://`, `memory://`) run no relay: their producers publish inline and
write no outbox. A second copy of a message is harmless: the worker's claim is a compare-and-set (DESIGN §2), so a task
runs once however many copies arrive.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import clock
from .outbox import uses_background_publisher
from .security import mask_text
from .store.outbox_state import OutboxItem, OutboxStore
from .store.periodic_state import PeriodicStateStore

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.relay")

#: The store lease whose holder relays (one worker at a time).
LEASE = "outbox-relay"
#: Entries read per store query, and most queries per pass (a long outage's backlog goes on next pass).
BATCH = 500
MAX_BATCHES = 20


@dataclass
class RelayPass:
    """What one pass did: entries published for the first time, republished, kept, and removed as done."""

    published: int = 0
    republished: int = 0
    kept: int = 0
    removed: int = 0


class Relay:
    """One worker's relay; `tick()` runs a pass when this worker holds the lease.

    Args:
        app: the app whose store and broker to use.
        owner: the lease holder's name (the worker id).
    """

    def __init__(self, app: Decortask, owner: str) -> None:
        self.app = app
        self.owner = owner

    def _stores(self) -> tuple[OutboxStore, PeriodicStateStore] | None:
        """The store as an outbox and a lease holder, or None where no producer writes an outbox."""
        if not uses_background_publisher(self.app):  # an embedded broker: `.delay()` publishes inline
            return None
        store = self.app.store
        if isinstance(store, OutboxStore) and isinstance(store, PeriodicStateStore):
            return store, store
        return None

    def tick(self, now: float | None = None) -> RelayPass | None:
        """One pass at `now` (default: the clock); None when another worker holds the lease."""
        stores = self._stores()
        if stores is None:
            return None
        outbox, leases = stores
        now = clock.now() if now is None else now
        settings = self.app.settings
        if not leases.acquire_lease(LEASE, self.owner, max(3 * settings.relay_interval, 10.0), now):
            return None
        done = RelayPass()
        for _ in range(MAX_BATCHES):
            items = outbox.outbox_due(now - settings.relay_after, now - settings.republish_after, BATCH)
            self._relay(outbox, items, now, done)
            if len(items) < BATCH:
                break
        return done

    def close(self) -> None:
        """Hand the lease over at once (a clean shutdown)."""
        stores = self._stores()
        if stores is not None:
            stores[1].release_lease(LEASE, self.owner)

    def _relay(self, outbox: OutboxStore, items: list[OutboxItem], now: float, done: RelayPass) -> None:
        settings = self.app.settings
        finished = [item.entry.task_id for item in items if not item.waiting]
        unpublished = [item for item in items if item.waiting and not item.published]
        lost_by_queue = _by_queue(item for item in items if item.waiting and item.published)
        looked_at: list[str] = []
        for queue, group in _by_queue(unpublished).items():
            self._publish(group)
            looked_at += [item.entry.task_id for item in group]
            done.published += len(group)
            logger.info(
                "relay: published %d messages of queue %s that no producer had confirmed within "
                "relay_after=%g s",
                len(group),
                queue,
                settings.relay_after,
            )
        for queue, group in lost_by_queue.items():
            looked_at += [item.entry.task_id for item in group]
            ready = self.app.transport.queue_size(queue)
            if ready >= len(group):  # a backlog: their messages are most likely still queued
                done.kept += len(group)
                continue
            self._publish(group)
            done.republished += len(group)
            logger.warning(
                "relay: republished %d PENDING tasks of queue %s whose messages were published over "
                "republish_after=%g s ago and never consumed, while the queue holds %d messages: the broker "
                "lost them (e.g. Redis restarted without persistence); a copy that still arrives is skipped",
                len(group),
                queue,
                settings.republish_after,
                ready,
            )
        outbox.mark_published(looked_at, now)  # looked at again republish_after from now
        outbox.outbox_remove(finished)
        done.removed += len(finished)

    def _publish(self, items: Iterable[OutboxItem]) -> None:
        entries = [item.entry for item in items]
        for persistent in (True, False):
            group = [
                (e.body.encode(), e.queue, e.priority, None) for e in entries if e.persistent is persistent
            ]
            if group:
                self.app.transport.publish_many(group, persistent=persistent)


def _by_queue(items: Iterable[OutboxItem]) -> dict[str, list[OutboxItem]]:
    grouped: dict[str, list[OutboxItem]] = defaultdict(list)
    for item in items:
        grouped[item.entry.queue].append(item)
    return grouped


def run_relay(app: Decortask, owner: str, stop: threading.Event) -> None:
    """A worker's relay thread: a pass every `relay_interval` until `stop` is set, then the lease goes."""
    relay = Relay(app, owner)
    if not uses_background_publisher(app):
        return  # nothing to relay: producers on this broker publish inline
    try:
        while not stop.wait(app.settings.relay_interval):
            try:
                relay.tick()
            except Exception as exc:  # the broker or the store is down: the next pass tries again
                logger.warning(
                    "relay pass failed (%s); will retry", mask_text(str(exc)) or type(exc).__name__
                )
    finally:
        try:
            relay.close()
        except Exception as exc:  # the lease lapses on its own
            logger.warning(
                "relay: could not hand the lease over (%s)", mask_text(str(exc)) or type(exc).__name__
            )
