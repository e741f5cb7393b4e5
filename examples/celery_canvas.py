"""Celery's canvas with one changed import: Celery-style tasks in chains, groups, chords and callbacks.

Run from the repository root: `python -m examples.celery_canvas`. With nothing configured, the broker and
the store are one SQLite file (`decortask.db`), so no server is needed. docs/migrating-from-celery.md
quotes it.
"""

from __future__ import annotations

import subprocess
import sys

# was: from celery import chain, chord, group, shared_task / from celery.result import AsyncResult
from decortask.canvas import derived_id
from decortask.compat.celery import AsyncResult, chain, chord, group, shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def mul(x, y):
    return x * y


@shared_task
def xsum(numbers):
    return sum(numbers)


@shared_task(bind=True)
def stamp(self, value):
    return f"{value} (by {self.request.task})"


@shared_task
def fails(x):
    raise ValueError(f"{x} is not welcome")


@shared_task
def error_handler(uuid):
    exc = AsyncResult(uuid).get(propagate=False)
    return f"{exc.error_type}: {exc.error_message}"


def main() -> int:
    piped = (add.s(2, 2) | add.s(4) | add.s(8)).apply_async()
    chained = chain(add.s(4, 4), mul.s(8), mul.s(10)).apply_async()
    pairs = group(add.s(i, i) for i in range(10)).apply_async()
    summed = chord((add.s(i, i) for i in range(10)), xsum.s()).apply_async()
    called = chord(add.s(i, i) for i in range(10))(xsum.s())  # sends it at once, as in Celery
    bound = (add.s(1, 2) | stamp.s()).apply_async()  # a bind=True step gets its own self.request
    linked = add.apply_async((2, 2), link=add.s(16))
    failed = fails.apply_async((7,), link_error=error_handler.s())
    print("enqueued; starting a worker until the queue is empty")
    worker = [
        sys.executable,
        "-m",
        "decortask",
        "worker",
        "-A",
        "examples.celery_canvas",
        "--burst",
        "-l",
        "ERROR",
    ]
    subprocess.run(worker, check=True)
    print(f"chain: {piped.get(timeout=10)}, {chained.get(timeout=10)}")  # 16, 640
    print(f"group: {pairs.get(timeout=10)}")  # [0, 2, 4, ..., 18]
    print(f"chord: {summed.get(timeout=10)}, {called.get(timeout=10)}")  # 90, 90
    print(f"bound step: {bound.get(timeout=10)}")
    # A link's task id is derived from the task's: derived_id(id, "link:0"), "link_error:0" for an errback.
    print(f"link: {AsyncResult(derived_id(linked.id, 'link:0')).get(timeout=10)}")  # 20
    print(f"link_error: {AsyncResult(derived_id(failed.id, 'link_error:0')).get(timeout=10)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
