"""Tasks for tests/test_log_batching.py, run in process and by a real `decortask worker -A tests.log_batching_tasks`.

Names are explicit so the producer (which imports this file as `log_batching_tasks`) and the worker agree.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from decortask import TaskContext, get_task_context, task, task_log

#: The user's own logger, whose records the worker captures into the task's log.
shop = logging.getLogger("lb.shop")
#: Set by a test to let `waits` finish.
release = threading.Event()


@task(name="lb.three_lines")
def three_lines(n: int) -> int:
    task_log("one", n=n)
    task_log("two")
    task_log("three")
    return n


@task(name="lb.quiet")
def quiet() -> int:
    return 1


@task(name="lb.many_lines")
def many_lines(count: int) -> int:
    for i in range(count):
        task_log(f"line {i}")
    return count


@task(name="lb.reports_progress")
def reports_progress(ctx: TaskContext) -> str:
    task_log("before progress 1")
    task_log("before progress 2")
    ctx.set_progress(0.5, "half")
    task_log("before output")
    ctx.set_output({"rows": 1})
    task_log("after")
    return "ok"


@task(name="lb.waits")
def waits() -> str:
    task_log("started")
    if not release.wait(timeout=60):
        raise TimeoutError("the test never released the task")
    task_log("finishing")
    return "done"


def _stored(ctx: TaskContext, message: str) -> bool:
    """Whether `message` is in the running task's stored log (read from the store its lines go to)."""
    assert ctx._log is not None
    record = ctx._log.store.get(ctx.task_id)
    return record is not None and any(line.message == message for line in record.logs)


@task(name="lb.every_kind", retries=1, delay=0.01)
def every_kind(ctx: TaskContext, lines: int) -> str:
    """Writes lines that leave the worker by every kind of write, in an order the test checks."""
    if ctx.attempt == 1:
        task_log("a1")
        print("p1")
        shop.warning("l1")
        ctx.set_progress(0.5)  # written before the progress
        for i in range(lines):  # full buffers written as they fill
            task_log(f"n{i}")
        task_log("waits for the interval")
        deadline = time.monotonic() + 30
        while not _stored(ctx, "waits for the interval"):  # the flusher thread writes it
            if time.monotonic() > deadline:
                raise AssertionError("the interval write never came")
            time.sleep(0.01)
        task_log("after the interval")
        raise ValueError("attempt 1 fails")
    task_log("a2")
    get_task_context().set_output({"done": True})
    print("p2 unfinished", end="")
    return "ok"


@task(name="lb.fails_once_in_child", retries=1, delay=0.01)
def fails_once_in_child(ctx: TaskContext) -> int:
    task_log(f"one of attempt {ctx.attempt}", pid=os.getpid())
    print(f"printed by attempt {ctx.attempt}")
    task_log(f"three of attempt {ctx.attempt}")
    if ctx.attempt == 1:
        raise ValueError("first attempt fails")
    return ctx.attempt
