"""Tasks the graph tests run, in-process and in real worker subprocesses (`-A tests.graph_tasks`).

Importing it registers `workflow_tasks` too. Every run of these tasks is recorded as an effect (the file
named by `DECORTASK_TEST_EFFECTS`, see `behaviour_tasks.record_effect`), so tests can count runs.
"""

from __future__ import annotations

import time
from typing import Any

from decortask import TaskContext, task

try:  # the test process has tests/ on its path; a worker imports this module as tests.graph_tasks
    import workflow_tasks  # noqa: F401  (registers the wf.* tasks beside these)
    from behaviour_tasks import record_effect
except ImportError:
    import tests.workflow_tasks  # noqa: F401
    from tests.behaviour_tasks import record_effect


@task(name="g.number")
def number(ctx: TaskContext, x: int) -> int:
    record_effect(ctx, "number")
    return x


@task(name="g.double")
def double(ctx: TaskContext, source: int) -> int:
    """Takes the node `source`'s result."""
    record_effect(ctx, "double")
    return 2 * source


@task(name="g.total")
def total(ctx: TaskContext, **results: int | None) -> int:
    """The sum of every dependency's result (None for one that did not succeed counts 0)."""
    record_effect(ctx, "total")
    return sum(value or 0 for value in results.values())


@task(name="g.boom")
def boom(ctx: TaskContext, **results: Any) -> None:
    record_effect(ctx, "boom")
    raise RuntimeError("g.boom always fails")


@task(name="g.report")
def report(ctx: TaskContext, **results: Any) -> dict[str, Any]:
    """A finally node: returns what it was given, by dependency name."""
    record_effect(ctx, "report")
    return results


@task(name="g.cleanup")
def cleanup(ctx: TaskContext) -> str:
    """A finally node that takes no results (`.si()`)."""
    record_effect(ctx, "cleanup")
    return "clean"


@task(name="g.slow", requeue_on_interrupt=True)
def slow(ctx: TaskContext, seconds: float, **results: Any) -> float:
    """Runs long enough to be killed under; runs again if its worker dies (opted in)."""
    record_effect(ctx, "slow")
    time.sleep(seconds)
    return seconds


@task(name="g.slow_once")
def slow_once(ctx: TaskContext, seconds: float, **results: Any) -> float:
    """Like `slow`, not opted in to requeue_on_interrupt: ends INTERRUPTED if its worker dies."""
    record_effect(ctx, "slow_once")
    time.sleep(seconds)
    return seconds


@task(name="g.waits")
def waits(ctx: TaskContext, seconds: float) -> str:
    """Runs until cancelled (checks `should_stop`) or `seconds` pass."""
    record_effect(ctx, "waits")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.should_stop():
        time.sleep(0.02)
    return "stopped" if ctx.should_stop() else "done"
