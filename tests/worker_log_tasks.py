"""Tasks for the worker-output tests, run in-process and by real `decortask worker -A tests.worker_log_tasks`.

Names are explicit so the producer (which imports this file as `worker_log_tasks`) and the worker agree.
"""

from __future__ import annotations

from decortask import TaskContext, task

#: Values passed to and returned by the tasks below: none may appear in a worker's log.
ARGUMENT_SENTINEL = "argument-sentinel-7731"
RESULT_SENTINEL = "result-sentinel-4417"
SECRET = "hunter2-sentinel"


@task(name="wlog.echo")
def echo(text: str) -> str:
    return RESULT_SENTINEL


@task(name="wlog.refuses")
def refuses(text: str) -> None:
    raise ValueError(f"the order was refused; password={SECRET}")


@task(name="wlog.fails_once", retries=1, delay=0.1)
def fails_once(ctx: TaskContext, text: str) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 lost its connection")
    return RESULT_SENTINEL
