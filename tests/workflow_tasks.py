"""Tasks the workflow tests run, in-process and in real worker subprocesses (`-A tests.workflow_tasks`).

Names are explicit so the producer (which imports this file as `workflow_tasks`) and the worker (which
imports `tests.workflow_tasks`) agree. Tasks that matter for "exactly once" append to the effects file
named by `DECORTASK_TEST_EFFECTS` (see `behaviour_tasks.record_effect`).
"""

from __future__ import annotations

import time
from typing import Any

from decortask import TaskContext, task

try:  # the test process has tests/ on its path; a worker imports this module as tests.workflow_tasks
    from behaviour_tasks import record_effect
except ImportError:
    from tests.behaviour_tasks import record_effect


@task(name="wf.add")
def add(x: int, y: int) -> int:
    return x + y


@task(name="wf.mul")
def mul(x: int, y: int) -> int:
    return x * y


@task(name="wf.fail")
def fail(x: Any) -> None:
    raise ValueError(f"wf.fail got {x!r}")


@task(name="wf.tsum")
def tsum(ctx: TaskContext, values: list[Any]) -> Any:
    """A chord callback: the sum of its members' results; each run is recorded as an effect."""
    record_effect(ctx, "tsum")
    return sum(values)


@task(name="wf.collect")
def collect(ctx: TaskContext, values: list[Any]) -> list[Any]:
    """A chord callback that returns what it was given (failures included when passed)."""
    record_effect(ctx, "collect")
    return values


@task(name="wf.slow_add", requeue_on_interrupt=True)
def slow_add(ctx: TaskContext, x: int, y: int, seconds: float) -> int:
    """A member that runs long enough to be killed under; runs again if its worker dies."""
    record_effect(ctx, "slow_add")
    time.sleep(seconds)
    return x + y


@task(name="wf.slow_add_once")
def slow_add_once(ctx: TaskContext, x: int, y: int, seconds: float) -> int:
    """A member not opted in to requeue_on_interrupt: if its worker dies it ends INTERRUPTED."""
    record_effect(ctx, "slow_add_once")
    time.sleep(seconds)
    return x + y


@task(name="wf.on_error")
def on_error(ctx: TaskContext, failed_task_id: str) -> str:
    """A `link_error=` callback: gets the failed task's id."""
    record_effect(ctx, "on_error")
    return f"handled {failed_task_id}"


@task(name="wf.overrun", timeout=1)
def overrun(x: Any) -> None:
    """Runs past its time limit: a process-pool worker stops it by force (FAILED, timeout)."""
    time.sleep(60)


@task(name="wf.flaky", retries=2, delay=0.1)
def flaky(ctx: TaskContext, x: int) -> int:
    """Fails its first attempt, then returns `x`: a chord member that retries."""
    record_effect(ctx, "flaky")
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    return x
