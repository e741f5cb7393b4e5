"""Tasks of the flow-control tests (issue 17), run by real worker processes (`-A tests.limit_tasks`).

Each writes one JSON line per start and end to `DECORTASK_TEST_EFFECTS` (O_APPEND: lines of concurrent
workers never interleave), so the tests read when every attempt started and ended, and where.
"""

from __future__ import annotations

import json
import os
import time

from decortask import TaskContext, task


def note(ctx: TaskContext, event: str, **fields: object) -> None:
    line = {
        "task": ctx.name,
        "id": ctx.task_id,
        "event": event,
        "ts": time.time(),
        "pid": os.getpid(),
        **fields,
    }
    fd = os.open(os.environ["DECORTASK_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_notes(path: str, task_name: str | None = None, event: str | None = None) -> list[dict[str, object]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [
        r
        for r in rows
        if (task_name is None or r["task"] == task_name) and (event is None or r["event"] == event)
    ]


@task(name="lt.paced", rate_limit="5/s")
def paced(ctx: TaskContext, n: int) -> int:
    note(ctx, "start", n=n)
    return n


@task(name="lt.tenant", rate_limit="2/s", rate_limit_key=lambda tenant, n: tenant)
def per_tenant(ctx: TaskContext, tenant: str, n: int) -> int:
    note(ctx, "start", key=tenant, n=n)
    return n


@task(name="lt.pair", concurrency_limit=2)
def pair(ctx: TaskContext, n: int, seconds: float) -> int:
    note(ctx, "start", n=n)
    time.sleep(seconds)
    note(ctx, "end", n=n)
    return n


@task(name="lt.free")
def free(ctx: TaskContext, n: int, seconds: float) -> int:
    note(ctx, "start", n=n)
    time.sleep(seconds)
    note(ctx, "end", n=n)
    return n


@task(name="lt.solo_per_tenant", concurrency_limit=1, concurrency_key=lambda tenant, n, seconds: tenant)
def solo_per_tenant(ctx: TaskContext, tenant: str, n: int, seconds: float) -> int:
    note(ctx, "start", key=tenant, n=n)
    time.sleep(seconds)
    note(ctx, "end", key=tenant, n=n)
    return n
