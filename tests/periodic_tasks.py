"""The task the periodic worker tests schedule (through DECORTASK_SCHEDULES); writes one line per run.

Each run appends its task id, slot and pid to `DECORTASK_TEST_EFFECTS`, so a test counts runs per slot.
"""

from __future__ import annotations

import json
import os
import time

from decortask import TaskContext, task


@task(name="pt.beat")
def beat(ctx: TaskContext) -> str:
    path = os.environ["DECORTASK_TEST_EFFECTS"]
    line = json.dumps(
        {"id": ctx.task_id, "slot": ctx.tags.get("slot"), "pid": os.getpid(), "ts": time.time()}
    )
    # O_APPEND writes of one short line are atomic: concurrent workers never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return "ok"
