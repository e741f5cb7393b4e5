"""Tasks and an app for the process-pool middleware test: a child imports this module (`-A`).

`LogHooks` writes each execute hook into the running task's own log, so the hooks' order and process can
be read from the task's record in any process.
"""

from __future__ import annotations

import os

from decortask import Decortask, ExecutionOutcome, Middleware, TaskContext, task
from decortask.message import Message


class LogHooks(Middleware):
    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        ctx.log("before_execute", pid=os.getpid(), meta=dict(message.meta))

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        ctx.log("after_execute", pid=os.getpid(), status=outcome.status.value)


# Made the default app at import, as a user's tasks module would: a process-pool child takes its middleware.
app = Decortask("memory://", "memory://", middleware=[LogHooks()])


@task(name="middleware_tasks.where")
def where(ctx: TaskContext) -> int:
    ctx.log("task body", pid=os.getpid())
    return os.getpid()
