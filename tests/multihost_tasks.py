"""Tasks of the multi-host harness (tests/test_multihost.py), run by workers in network namespaces
(`-A tests.multihost_tasks`; the test imports this file as `multihost_tasks`, hence the explicit names).

Every run appends a line when it starts and when it ends to the file `DECORTASK_TEST_RUNS` names: the task, its
attempt, the host (`DECORTASK_TEST_HOST`), the pid and the time. The file is on the machine's own disk, not
behind the namespace's link, so a partitioned host's runs are recorded too: the test counts runs from it, not
from the store.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from decortask import TaskContext, task


def record_run(ctx: TaskContext, event: str) -> None:
    line = json.dumps(
        {
            "id": ctx.task_id,
            "attempt": ctx.attempt,
            "event": event,
            "host": os.environ.get("DECORTASK_TEST_HOST", "?"),
            "pid": os.getpid(),
            "ts": time.time(),  # the machine's clock, never a host's skewed one: the test compares these
        }
    )
    # One short O_APPEND write is atomic: lines of concurrent workers never interleave.
    fd = os.open(os.environ["DECORTASK_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_runs(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


#: How long a re-run (attempt 2 on another host) takes, whatever the first run's `seconds`.
RERUN_SECONDS = 1.0


def _work(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    record_run(ctx, "start")
    time.sleep(
        seconds if ctx.attempt == 1 else RERUN_SECONDS
    )  # not cooperative: a partitioned host's run goes on to its end, then tries to write
    mine = {"host": os.environ.get("DECORTASK_TEST_HOST", "?"), "attempt": ctx.attempt}
    ctx.set_output(mine)  # on a cut-off host: waits for the link, then must not change a settled record
    record_run(ctx, "end")
    return mine


@task(name="mh.work", requeue_on_interrupt=True)
def work(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Opted in: an attempt whose worker is lost runs again elsewhere."""
    return _work(ctx, seconds)


@task(name="mh.fails_once", retries=1, delay=2.0)
def fails_once(ctx: TaskContext) -> dict[str, Any]:
    """Raises on attempt 1: its retry is due 2 s later by the clock of the host that ran it, and is claimed
    from the store's schedule by whichever host's clock says it is due first."""
    record_run(ctx, "start")
    if ctx.attempt == 1:
        record_run(ctx, "end")
        raise ConnectionError("attempt 1 fails on purpose")
    record_run(ctx, "end")
    return {"host": os.environ.get("DECORTASK_TEST_HOST", "?"), "attempt": ctx.attempt}


@task(name="mh.work_not_opted_in")
def work_not_opted_in(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Not opted in: an attempt whose worker is lost ends INTERRUPTED (worker_lost)."""
    return _work(ctx, seconds)
