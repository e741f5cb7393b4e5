"""The outbox's background publisher: `.delay()` returns once the task's record is durable; this publishes.

On a network broker (RabbitMQ, Redis) `.delay()` writes the task's record and its outbox entry in one store
write (`store/outbox_state.py`), hands the message to this process's `Publisher` and returns. The publisher's
thread takes everything handed over since its last batch and publishes it in one go (`publish_many`: on
RabbitMQ every message is sent before the confirms are awaited, once for the batch), so callers never wait
for the broker and a busy producer gets large batches. Confirmed tasks are marked published in the store in
batches (every `MARK_INTERVAL` or `MARK_BATCH` ids), never one store write per task.

Nothing is lost when the publisher cannot do its job: a process killed before its batch went out, or a
broker that is down, leaves the entries unpublished, and the relay (`relay.py`, in the workers) publishes
them after `relay_after`. A failed batch is kept and retried with backoff (one WARNING per outage); a
process that exits normally flushes the publisher first (atexit, bounded by `AT_EXIT_WAIT`).
`apply_async(..., confirm=True)` does not use the thread: it publishes on the caller's thread and waits for
the broker's confirm, as every `.delay()` did before (F-11, F-12).

The embedded brokers (`sqlite://`, `memory://`) publish inline: their publish is a local write costing
about what the record's does, so a thread would only add latency.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .security import mask_text
from .store.outbox_state import OutboxEntry, OutboxStore

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.outbox")

#: Brokers whose publish is a network round trip, worth taking off the caller's path.
BACKGROUND_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "redis", "rediss"})
#: Most seconds confirmed ids wait before they are marked published in the store (one write for all).
MARK_INTERVAL = 0.2
#: Confirmed ids that trigger the mark write at once.
MARK_BATCH = 500
#: Most messages published in one batch.
PUBLISH_BATCH = 1000
#: Messages held in memory while the broker is down; older ones are left to the relay (they are in the
#: store's outbox either way).
MAX_HELD = 100_000
#: Backoff after a failed batch: first and longest wait (seconds).
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: Most seconds a process that exits waits for its publisher to hand everything to the broker.
AT_EXIT_WAIT = 5.0


@dataclass(frozen=True)
class Outgoing:
    """One message handed to the publisher: the task's id, its encoded body and where it goes."""

    task_id: str
    body: bytes
    queue: str
    priority: int
    persistent: bool


def uses_background_publisher(app: Decortask) -> bool:
    """Whether `.delay()` on `app` goes through the outbox: a network broker and a store that keeps one."""
    scheme = app.settings.broker_url.split("://", 1)[0].lower()
    return scheme in BACKGROUND_SCHEMES and isinstance(app.store, OutboxStore)


def watch_published(app: Decortask, entries: Sequence[OutboxEntry]) -> None:
    """Outbox entries, as published, for messages sent without `.delay()`'s outbox (the scheduler's
    delayed work, periodic runs): the relay then republishes one a broker lost (F-13), as for `.delay()`'s.

    Written right after the publish; the callers' own state covers a crash before it (a schedule entry
    published again once its claim lapses, a periodic slot not yet advanced). Nothing where no relay runs.
    """
    store = app.store
    if entries and uses_background_publisher(app) and isinstance(store, OutboxStore):
        store.outbox_add(entries)


class Publisher:
    """One app's background publisher in this process (a daemon thread, started on first use).

    Args:
        app: the app whose transport publishes and whose store is marked.
    """

    def __init__(self, app: Decortask) -> None:
        self._app = app
        self._cond = threading.Condition()
        self._reset()
        atexit.register(_flush_at_exit, weakref.ref(self))
        # Import the broker's client modules now, on the caller's thread: the publisher's first connection
        # may otherwise import one that registers an atexit hook (redis-py imports concurrent.futures),
        # which Python refuses once it is exiting, and a short script's only batch goes out just then.
        with contextlib.suppress(Exception):
            app.transport.connection().transport  # noqa: B018 - the attribute loads the transport class

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._waiting: list[Outgoing] = []
        self._in_flight = 0
        self._marks: list[str] = []
        self._marks_since = 0.0
        self._flush_wanted = False
        self._failing = False
        self._stopping = False
        self._dropped = 0
        self._thread: threading.Thread | None = None

    # -- callers -------------------------------------------------------------------------------------------

    def submit(self, items: Sequence[Outgoing]) -> None:
        """Hand messages over for publishing; returns at once."""
        with self._cond:
            self._start()
            self._waiting.extend(items)
            if len(self._waiting) > MAX_HELD:  # the broker is down for long: the relay has the rest
                self._dropped += len(self._waiting) - MAX_HELD
                del self._waiting[: len(self._waiting) - MAX_HELD]
            self._cond.notify_all()

    def confirmed(self, task_ids: Sequence[str]) -> None:
        """Mark tasks published that the caller published and saw confirmed itself (`confirm=True`)."""
        with self._cond:
            self._start()
            self._add_marks(task_ids)
            self._cond.notify_all()

    def flush(self, timeout: float, *, unless_failing: bool = False) -> bool:
        """Wait until everything handed over is published and marked; True if it was within `timeout`.

        With `unless_failing`, return False at once while the publisher is backing off from a broker that
        refused its last batch (the relay publishes those messages once the broker is back).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._pid != os.getpid():
                return True  # a forked child: nothing of its own was handed over
            while self._waiting or self._in_flight or self._marks:
                remaining = deadline - time.monotonic()
                thread = self._thread
                if remaining <= 0 or thread is None or not thread.is_alive():
                    return False
                if unless_failing and self._failing:
                    return False
                self._flush_wanted = True
                self._cond.notify_all()
                self._cond.wait(min(remaining, 0.1))
            return True

    def close(self, timeout: float) -> bool:
        """Flush (within `timeout`), then stop the thread; a later `submit` starts a new one."""
        flushed = self.flush(timeout, unless_failing=True)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._cond:
            if thread is None or not thread.is_alive():  # else it stops once its publish returns
                self._thread = None
                self._stopping = False
        return flushed

    # -- the thread ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread if it is not running (first use, after `close()`, or in a forked child)."""
        if self._pid != os.getpid():
            self._reset()  # the parent's thread and its half-sent state did not cross the fork
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="decortask-publisher", daemon=True)
            self._thread.start()

    def _add_marks(self, task_ids: Sequence[str]) -> None:
        if task_ids and not self._marks:
            self._marks_since = time.monotonic()
        self._marks.extend(task_ids)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._marks_due():
                    self._cond.wait(self._next_wake())
                if self._stopping and (self._failing or not self._waiting):
                    # Closing: what the broker refused stays in the outbox, for the relay.
                    self._waiting.clear()
                    self._flush_wanted = True
                    stop = True
                else:
                    stop = False
                batch = self._waiting[:PUBLISH_BATCH]
                del self._waiting[:PUBLISH_BATCH]
                self._in_flight = len(batch)
            if stop:
                self._write_marks()
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()
                return
            if batch:
                delay = self._app.settings.publisher_delay
                if delay:
                    time.sleep(delay)
                if self._publish(batch):
                    backoff = 0.0
                    with self._cond:
                        self._add_marks([item.task_id for item in batch])
                else:
                    backoff = min(max(backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
                    with self._cond:
                        self._waiting[:0] = batch  # first again, once the backoff is over
                        self._in_flight = 0
                        self._cond.notify_all()
                        resume = time.monotonic() + backoff
                        while not self._stopping and time.monotonic() < resume:  # `close()` cuts it short
                            self._cond.wait(resume - time.monotonic())
                    continue
            self._write_marks()
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _marks_due(self) -> bool:
        if not self._marks:
            return False
        waited = time.monotonic() - self._marks_since
        return self._flush_wanted or len(self._marks) >= MARK_BATCH or waited >= MARK_INTERVAL

    def _next_wake(self) -> float | None:
        if not self._marks:
            return None
        return max(0.0, MARK_INTERVAL - (time.monotonic() - self._marks_since))

    def _publish(self, batch: list[Outgoing]) -> bool:
        transport = self._app.transport
        try:
            for persistent in (True, False):  # one publish_many per delivery mode
                group = [(i.body, i.queue, i.priority, None) for i in batch if i.persistent is persistent]
                if group:
                    transport.publish_many(group, persistent=persistent)
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "background publisher: could not publish %d messages (%s); they are safe in the store's "
                    "outbox, retrying with backoff, and a worker's relay publishes them after relay_after=%g s",
                    len(batch),
                    mask_text(str(exc)) or type(exc).__name__,
                    self._app.settings.relay_after,
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("background publisher: the broker %s takes messages again", transport.url_masked)
            self._failing = False
        return True

    def _write_marks(self) -> None:
        with self._cond:
            if not self._marks_due():
                return
            ids, self._marks = self._marks, []
            self._flush_wanted = False
        if self._dropped:
            logger.warning(
                "background publisher: %d messages left to the relay (more than %d held while the broker was "
                "down)",
                self._dropped,
                MAX_HELD,
            )
            self._dropped = 0
        store = self._app.store
        assert isinstance(store, OutboxStore)
        try:
            store.mark_published(ids, time.time())
        except Exception as exc:  # the relay finds them unmarked and publishes them again: harmless
            logger.warning(
                "background publisher: could not mark %d published tasks in the store (%s); the relay may "
                "publish them a second time, which their workers skip",
                len(ids),
                mask_text(str(exc)) or type(exc).__name__,
            )


def _flush_at_exit(ref: weakref.ReferenceType[Publisher]) -> None:
    publisher = ref()
    if publisher is None:
        return
    with contextlib.suppress(Exception):
        if not publisher.flush(AT_EXIT_WAIT, unless_failing=True):
            logger.warning(
                "exiting with messages the background publisher could not hand to the broker within %g s; "
                "they are in the store's outbox and a worker's relay publishes them",
                AT_EXIT_WAIT,
            )
