"""Tasks for tests/test_logging_output.py, run by real `decortask worker -A tests.output_tasks` and in process.

Names are explicit so the producer (which imports this file as `output_tasks`) and the worker agree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from decortask import TaskContext, task, task_log

SECRET = "hunter2-sentinel"
#: The user's own logger, as a project would name it.
shop = logging.getLogger("shop.billing")


@task(name="out.logs_own")
def logs_own(order: int) -> str:
    shop.info("charging order %s; password=%s", order, SECRET)
    task_log("stored line")
    print(f"printed order {order}; token={SECRET}")
    return "ok"


@task(name="out.async_logs_own")
async def async_logs_own(order: int) -> str:
    await asyncio.sleep(0)
    shop.info("async charging order %s", order)
    print(f"async printed order {order}")
    return "ok"


@task(name="out.chatty")
def chatty(ctx: TaskContext, lines: int, tag: str) -> int:
    for i in range(lines):
        print(f"{tag} stdout {i}")
        shop.warning("%s logging %s", tag, i)
    return lines


@task(name="out.quiet")
def quiet() -> int:
    return 1


#: The tasks of `together` wait for each other, so their prints interleave in one worker's 8 threads.
together_barrier = threading.Barrier(8)


@task(name="out.together")
def together(lines: int, tag: str) -> int:
    together_barrier.wait(timeout=60)
    for i in range(lines):
        print(f"{tag} stdout {i}")
        shop.warning("%s logging %s", tag, i)
        time.sleep(0.001)  # let the other threads write in between
    return lines


@task(name="out.publishes")
def publishes(ctx: TaskContext, flag: str) -> str:
    ctx.set_output({"rows": 5})
    ctx.set_output({"rows": 10, "file": "s3://bucket/part-1.csv", "password": SECRET})
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"
