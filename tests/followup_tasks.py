"""Tasks the continuation-sweep tests run in real worker subprocesses (`-A tests.followup_tasks`).

Every run is recorded as an effect (`behaviour_tasks.record_effect`), so a test counts runs. With
`FOLLOW_TEST_KILL_AFTER=<task name>[:<first argument>]`, the first process to continue the workflow of
such a task that ended (`workflow.continue_workflow`: after its outcome is written, before anything follows
it and before its message is acked) SIGKILLs itself there; `FOLLOW_TEST_KILL_MARKER` names the file that
says it happened (and that it must not happen again).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from decortask import TaskContext, task
from decortask import workflow as workflow_module

try:  # the test process has tests/ on its path; a worker imports this module as tests.followup_tasks
    from behaviour_tasks import record_effect
except ImportError:
    from tests.behaviour_tasks import record_effect


@task(name="fu.value")
def value(ctx: TaskContext, x: int) -> int:
    record_effect(ctx, f"value:{x}")
    return x


@task(name="fu.double")
def double(ctx: TaskContext, x: int) -> int:
    """A chain's next step, or a graph node taking its dependency `x`."""
    record_effect(ctx, f"double:{x}")
    return 2 * x


@task(name="fu.total")
def total(ctx: TaskContext, values: list[int]) -> int:
    """A chord's callback."""
    record_effect(ctx, "total")
    return sum(values)


def _killing(target: str, marker: str) -> Any:
    real = workflow_module.continue_workflow
    name, _, first = target.partition(":")

    def continue_workflow(app: Any, task_id: str, spec: dict[str, Any], write: Any) -> None:
        record = app.store.get(task_id)
        hit = (
            record is not None
            and record.status.terminal
            and record.name == name
            and (not first or (record.args and str(record.args[0]) == first))
        )
        if hit:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:  # killed once already: from now on, continue
                return real(app, task_id, spec, write)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(app, task_id, spec, write)

    return continue_workflow


_KILL_AFTER = os.environ.get("FOLLOW_TEST_KILL_AFTER")
if _KILL_AFTER:
    workflow_module.continue_workflow = _killing(_KILL_AFTER, os.environ["FOLLOW_TEST_KILL_MARKER"])
