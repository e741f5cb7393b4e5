"""Test helpers: drive the real decode -> execute -> settle path synchronously.

`run_pending()` uses the app's real broker and store: it publishes due scheduled work, fetches messages one
at a time, runs them in the calling thread and acks/dead-letters them exactly as a worker would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .app import Decortask, current_app
from .worker import Worker


def run_pending(
    app: Decortask | None = None,
    queues: Iterable[str] | None = None,
    *,
    max_tasks: int | None = None,
    now: float | None = None,
) -> int:
    """Run every message ready now (and every scheduled entry due by `now`) until the queues are empty.

    Args:
        app: the app (default: the current app).
        queues: queues to drain (default: the app's default queue).
        max_tasks: stop after this many messages.
        now: treat this UNIX time as "now" for the schedule (lets a test skip a retry delay or countdown).

    Returns:
        How many messages were processed.
    """
    app = app or current_app()
    worker = Worker(app, queues, concurrency=1, worker_id="run_pending")
    if now is not None:
        # The executor's eta and expiry checks see the same "now" as the schedule.
        frozen = now
        worker.executor.clock = lambda: max(time.time(), frozen)
    session = app.transport.open_consumer(worker.queues, prefetch=1, consume=False)
    processed = 0
    try:
        while max_tasks is None or processed < max_tasks:
            worker.scheduler.tick(now if now is not None else time.time())
            delivery = None
            for name in worker.queues:
                delivery = session.get(name)
                if delivery is not None:
                    break
            if delivery is None:
                return processed
            worker.settle(session, delivery, worker.process(delivery))
            processed += 1
        return processed
    finally:
        session.close()
