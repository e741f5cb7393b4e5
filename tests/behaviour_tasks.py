"""Tasks the behaviour and fault suites run in real worker subprocesses (`-A tests.behaviour_tasks`).

Names are explicit so the producer (which imports this file as `behaviour_tasks`) and the worker (which
imports `tests.behaviour_tasks`) agree. Every execution is appended to the effects file named by
`DECORTASK_TEST_EFFECTS`, so tests count executions instead of guessing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from decortask import TaskContext, task, task_log


def record_effect(ctx: TaskContext, event: str) -> None:
    path = os.environ.get("DECORTASK_TEST_EFFECTS")
    if not path:
        return
    line = json.dumps(
        {"id": ctx.task_id, "attempt": ctx.attempt, "event": event, "ts": time.time(), "pid": os.getpid()}
    )
    # O_APPEND writes of one short line are atomic, so concurrent workers never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_effects(path: str) -> list[dict[str, object]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


@task(name="bt.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="bt.flaky", retries=3, delay=0.3, backoff=2.0)
def flaky(ctx: TaskContext) -> int:
    task_log("attempt started", attempt=ctx.attempt)
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} failed on purpose")
    return ctx.attempt


@task(name="bt.always_fails", retries=1, delay=0.1)
def always_fails() -> None:
    raise RuntimeError("this task always fails")


@task(name="bt.report")
def report(ctx: TaskContext, text: str) -> str:
    task_log("received", length=len(text))
    ctx.set_progress(0.75, "almost there")
    task_log("finished")
    return text.upper()


@task(name="bt.started_at")
def started_at() -> float:
    return time.time()


@task(name="bt.sleep_opted_in", requeue_on_interrupt=True)
def sleep_opted_in(ctx: TaskContext, seconds: float) -> str:
    record_effect(ctx, "started")
    time.sleep(seconds)
    record_effect(ctx, "finished")
    return "slept"


@task(name="bt.sleep_not_opted_in")
def sleep_not_opted_in(ctx: TaskContext, seconds: float) -> str:
    record_effect(ctx, "started")
    time.sleep(seconds)
    record_effect(ctx, "finished")
    return "slept"


@task(name="bt.kills_its_worker", requeue_on_interrupt=True, max_deliveries=3)
def kills_its_worker(ctx: TaskContext) -> None:
    record_effect(ctx, "started")
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="bt.always_fails_counted", retries=3, delay=0.2, backoff=2.0)
def always_fails_counted(ctx: TaskContext) -> None:
    record_effect(ctx, "started")
    raise ValueError(f"attempt {ctx.attempt} fails on purpose")


@task(name="bt.fails_first_counted", retries=1, delay=3.0)
def fails_first_counted(ctx: TaskContext) -> int:
    record_effect(ctx, "started")
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails on purpose")
    return ctx.attempt


@task(name="bt.cooperative")
def cooperative(ctx: TaskContext, seconds: float) -> str:
    """Works in short steps and stops as soon as it is asked to."""
    record_effect(ctx, "started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.should_stop():
            record_effect(ctx, "stopped")
            return "stopped early"
        time.sleep(0.05)
    record_effect(ctx, "finished")
    return "finished"


@task(name="bt.stubborn", requeue_on_interrupt=True)
def stubborn(ctx: TaskContext, seconds: float) -> str:
    """Ignores should_stop(): only a forced stop ends it early (it is opted in, and still never requeued)."""
    record_effect(ctx, "started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    record_effect(ctx, "finished")
    return "finished"


@task(name="bt.over_time_limit", timeout=1.0, retries=1)
def over_time_limit(ctx: TaskContext) -> str:
    record_effect(ctx, "started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
    record_effect(ctx, "finished")
    return "finished"


@task(name="bt.stops_at_time_limit", timeout=1.0)
def stops_at_time_limit(ctx: TaskContext) -> str:
    record_effect(ctx, "started")
    while not ctx.should_stop():
        time.sleep(0.05)
    record_effect(ctx, "stopped")
    return "partial"


@task(name="bt.async_add")
async def async_add(ctx: TaskContext, a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    task_log("added asynchronously", worker=ctx.worker_id != "")
    return a + b


@task(name="bt.async_sleeper")
async def async_sleeper(ctx: TaskContext, seconds: float) -> str:
    """Awaits without checking should_stop(): only cancelling the coroutine ends it early."""
    record_effect(ctx, "started")
    await asyncio.sleep(seconds)
    record_effect(ctx, "finished")
    return "slept"


@task(name="bt.leaks_a_secret")
def leaks_a_secret(url: str) -> None:
    """Logs and raises with a connection URL in the text, as careless task code does."""
    task_log(f"connecting to {url}")
    task_log("retrying", password="hunter2-in-extra", note=f"via {url}")
    raise ConnectionError(f"could not connect to {url} (password=hunter2)")


@task(name="bt.soak_opted_in", requeue_on_interrupt=True)
def soak_opted_in(ctx: TaskContext, n: int) -> int:
    record_effect(ctx, "started")
    time.sleep(0.02 + (n % 7) * 0.01)
    record_effect(ctx, "finished")
    return n


@task(name="bt.soak_idempotent", requeue_on_interrupt=True)
def soak_idempotent(a: int, b: int) -> int:
    """Safe to run again, so opted in: a SIGKILL between its claim and its outcome re-runs it."""
    return a + b


@task(name="bt.soak_not_opted_in")
def soak_not_opted_in(ctx: TaskContext, n: int) -> int:
    record_effect(ctx, "started")
    time.sleep(0.02 + (n % 5) * 0.01)
    record_effect(ctx, "finished")
    return n


@task(name="bt.kills_itself_once", requeue_on_interrupt=True)
def kills_itself_once(ctx: TaskContext) -> int:
    """Ends its own process on attempt 1 (as a segfault would); later attempts succeed."""
    record_effect(ctx, "started")
    if ctx.attempt == 1:
        os._exit(1)
    record_effect(ctx, "finished")
    return ctx.attempt


@task(name="bt.kills_itself_once_not_opted_in")
def kills_itself_once_not_opted_in(ctx: TaskContext) -> int:
    record_effect(ctx, "started")
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    record_effect(ctx, "finished")
    return ctx.attempt


@task(name="bt.pid")
def pid() -> int:
    return os.getpid()


@task(name="bt.finishes_when_told")
def finishes_when_told(ctx: TaskContext, ready_file: str, go_file: str, wait: float = 30.0) -> str:
    """Touches `ready_file` just before it would finish, then returns once `go_file` exists (F-14)."""
    record_effect(ctx, "started")
    with open(ready_file, "a"):
        pass
    deadline = time.monotonic() + wait
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    record_effect(ctx, "finished")
    return "finished"


@task(name="bt.must_complete_sleep", must_complete=True)
def must_complete_sleep(ctx: TaskContext, seconds: float) -> str:
    record_effect(ctx, "started")
    time.sleep(seconds)
    record_effect(ctx, "finished")
    return "slept"
