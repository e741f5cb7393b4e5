"""Tasks the late-results tests run, in-process and in real worker subprocesses (`-A tests.late_tasks`).

Children that must end after their parent wait for the parent's record to be terminal (never for a time).
Every `on_late` follow-up run is recorded as an effect naming the child and its result. With
`LATE_TEST_KILL_AT` set (`before_followup` / `after_followup`), the first process to deliver a late result
SIGKILLs itself there: before creating the follow-up, or after creating it and before acking the child;
with `before_close`, the first process to close a parent's mailbox SIGKILLs itself just before.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from decortask import TaskContext, current_app, task
from decortask import late_results as late_results_module

try:  # the test process has tests/ on its path; a worker imports this module as tests.late_tasks
    from behaviour_tasks import record_effect
except ImportError:
    from tests.behaviour_tasks import record_effect


@task(name="lt.add")
def add(x: int, y: int) -> int:
    return x + y


def _wait_for_end(parent_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = current_app().store.get(parent_id)
        if record is not None and record.status.terminal:
            return
        time.sleep(0.02)
    raise TimeoutError(f"parent {parent_id} did not end within 60 s")


@task(name="lt.after_parent")
def after_parent(parent_id: str, value: int) -> int:
    """A child that ends only once its parent ended: its result is always late."""
    _wait_for_end(parent_id)
    return value


@task(name="lt.fail_after_parent")
def fail_after_parent(parent_id: str) -> None:
    _wait_for_end(parent_id)
    raise ValueError("the child failed after its parent ended")


@task(name="lt.on_late")
def on_late(ctx: TaskContext, late: dict[str, Any], label: str = "") -> dict[str, Any]:
    """The wake-up follow-up: records which child's result it got."""
    record_effect(ctx, f"on_late:{label}:{late['task_id']}:{late['status']}:{late['result']}")
    return late


@task(name="lt.hot_sum")
def hot_sum(ctx: TaskContext, n: int) -> int:
    """Spawns n children and merges each result while it runs (hot merge)."""
    for i in range(n):
        ctx.spawn(add.s(i, i), on_late=on_late.s("hot_sum"))
    got = [child.result for child in ctx.results(timeout=60)]
    if len(got) != n:
        raise AssertionError(f"merged {len(got)} of {n} children")
    return sum(got)


@task(name="lt.ahot_sum")
async def ahot_sum(ctx: TaskContext, n: int) -> int:
    """hot_sum as an `async def` task: `ctx.aresults()`."""
    for i in range(n):
        ctx.spawn(add.s(i, 10), on_late=on_late.s("ahot_sum"))
    got = [child.result async for child in ctx.aresults(timeout=60)]
    if len(got) != n:
        raise AssertionError(f"merged {len(got)} of {n} children")
    return sum(got)


@task(name="lt.spawn_late")
def spawn_late(ctx: TaskContext, values: list[int]) -> str:
    """Spawns children that end after it: every result goes to `on_late`."""
    for value in values:
        ctx.spawn(after_parent.s(ctx.task_id, value), on_late=on_late.s("late"))
    return "spawned"


@task(name="lt.hot_then_late")
def hot_then_late(ctx: TaskContext) -> int:
    """A child that ends while it runs (merged hot) and one that ends after it (late)."""
    ctx.spawn(add.s(20, 1), on_late=on_late.s("mixed"))
    ctx.spawn(after_parent.s(ctx.task_id, 99), on_late=on_late.s("mixed"))
    first = next(iter(ctx.results(timeout=60)))
    return int(first.result)


@task(name="lt.spawn_then_fail")
def spawn_then_fail(ctx: TaskContext) -> None:
    """Merges its child's result, then fails: the result it merged went nowhere, so it is late too."""
    ctx.spawn(add.s(2, 3), on_late=on_late.s("failed-parent"))
    list(ctx.results(timeout=60))
    raise RuntimeError("the parent failed after merging")


@task(name="lt.flaky_child", retries=1, delay=60)
def flaky_child(ctx: TaskContext, value: int) -> int:
    """Fails its first attempt: only its last attempt's outcome reaches the parent."""
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    return value * ctx.attempt


@task(name="lt.spawn_flaky")
def spawn_flaky(ctx: TaskContext) -> str:
    ctx.spawn(flaky_child.s(21), on_late=on_late.s("flaky"))
    return "spawned"


@task(name="lt.spawn_failing")
def spawn_failing(ctx: TaskContext) -> str:
    ctx.spawn(fail_after_parent.s(ctx.task_id), on_late=on_late.s("failing"))
    return "spawned"


@task(name="lt.slow_child", requeue_on_interrupt=True)
def slow_child(ctx: TaskContext, value: int, seconds: float) -> int:
    record_effect(ctx, "slow_child")
    time.sleep(seconds)
    return value


@task(name="lt.gather", requeue_on_interrupt=True)
def gather(ctx: TaskContext, n: int, seconds: float) -> int:
    """Spawns n children and merges them; run again after its worker died, it finds the same children."""
    for i in range(n):
        ctx.spawn(slow_child.s(i, seconds), on_late=on_late.s("gather"))
    record_effect(ctx, "gather")
    got = [child.result for child in ctx.results(timeout=120)]
    if len(got) != n:
        raise AssertionError(f"merged {len(got)} of {n} children")
    return sum(got)


def _killing(point: str, real: Any) -> Any:
    marker = os.environ["LATE_TEST_KILL_MARKER"]

    def killing(*args: Any, **kwargs: Any) -> Any:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # killed once already: from now on, do it
            return real(*args, **kwargs)
        if point == "after_followup":
            real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    return killing


_KILL_AT = os.environ.get("LATE_TEST_KILL_AT")
if _KILL_AT == "before_close":  # the parent's worker, between the parent's outcome and closing its mailbox
    late_results_module.close_if_ended = _killing(_KILL_AT, late_results_module.close_if_ended)
elif _KILL_AT:  # the worker delivering a late result, before or after creating the follow-up
    late_results_module.deliver_late = _killing(_KILL_AT, late_results_module.deliver_late)
