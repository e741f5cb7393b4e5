"""Tasks for the metrics tests, run by a real `decortask worker -A tests.metrics_tasks --metrics-port 0`.

Names are explicit so the producer (which imports this file as `metrics_tasks`) and the worker agree.
`metrics.ghost` is registered in the producer only (by `tests/test_metrics.py`): the worker dead-letters it.
"""

from __future__ import annotations

from decortask import TaskContext, task


@task(name="metrics.ok")
def ok(n: int) -> int:
    return n


@task(name="metrics.flaky", retries=1, delay=0.1)
def flaky(ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 lost its connection")
    return "second time lucky"


@task(name="metrics.boom")
def boom() -> None:
    raise ValueError("this task always fails")
