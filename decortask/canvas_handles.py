"""The handles of workflows (`canvas.py`): a `WorkflowHandle` waits for the task that ends a chain or a
chord, which the workers create later; a `GroupHandle` holds a group's members' handles, in order.

`handle_for` builds the handle of any node from where its result is (`canvas_launch.shape`): a chain's last
step, a chord's callback, a group's members (a list, nested as its groups are). Cancelling one cancels every
task of its workflow that exists and has not ended, nested ones included (`cancel_workflow`, which
`decortask cancel` calls too): the tasks are read by their `root_id` (`workflow_records`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .canvas_launch import Node, names_and_ids, resolve, shape
from .errors import TaskNotFound, WaitTimeout
from .handle import TaskHandle, TaskResult
from .states import TaskStatus
from .store.base import TaskQuery, TaskRecord, TaskStore

if TYPE_CHECKING:
    from .app import Decortask

__all__ = [
    "CreatedLaterHandle",
    "GroupHandle",
    "WorkflowHandle",
    "cancel_tasks",
    "cancel_workflow",
    "handle_for",
    "workflow_records",
]

R = TypeVar("R")
#: Most tasks of one workflow `decortask show` reads, a page of the store's listing at a time.
SHOW_LIMIT = 2000
_PAGE = 500
#: Most seconds between two reads while a workflow's final task is not created yet.
_POLL_MAX = 0.2


def cancel_tasks(app: Decortask, task_ids: Sequence[str]) -> int:
    """Cancel each of `task_ids` that exists and has not ended (a waiting one never runs); how many."""
    from .control import request_cancel

    cancelled = 0
    for task_id in task_ids:
        record = app.store.get(task_id)
        if record is not None and not record.status.terminal and request_cancel(app, task_id):
            cancelled += 1
    return cancelled


def workflow_records(store: TaskStore, root_id: str, limit: int = SHOW_LIMIT) -> list[TaskRecord]:
    """The tasks of workflow `root_id`, oldest first, at most `limit`; the task of id `root_id` first when
    there is one (a task whose links made it the root of their workflow)."""
    root = store.get(root_id)
    found: list[TaskRecord] = [] if root is None else [root]
    listed = 0
    while len(found) < limit:
        want = min(_PAGE, limit - len(found))
        page = store.list_tasks(TaskQuery(root_id=root_id, order="created", limit=want, offset=listed))
        listed += len(page)
        found.extend(record for record in page if record.id != root_id)
        if len(page) < want:
            break
    return found


def cancel_workflow(app: Decortask, root_id: str) -> tuple[int, int]:
    """Cancel every task of workflow `root_id` that has not ended; (how many were cancelled, how many tasks
    it has). Its steps and callbacks not created yet never are: the workflow fails naming what was
    cancelled."""
    records = workflow_records(app.store, root_id, limit=10**9)
    pending = [record.id for record in records if not record.status.terminal]
    return cancel_tasks(app, pending), len(records)


class CreatedLaterHandle(TaskHandle[R]):
    """The handle of a task its workflow creates later (a chain's last step, a chord's callback, a graph's
    node): `status` is PENDING until it exists, and `wait()`/`get()` wait for it to be created, then for
    its outcome. `cancel()` is the task's own, once it exists."""

    def __init__(
        self, app: Decortask, task_id: str, name: str, workflow_id: str, *, role: str = "its final task"
    ) -> None:
        super().__init__(app, task_id, name)
        self.workflow_id = workflow_id
        #: What the task is to its workflow, for messages ("its final task", "node 'summary'").
        self.role = role

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.workflow_id}: {self.name} {self.id}>"

    def done(self) -> bool:
        record = self.app.store.get(self.id)
        return record is not None and record.status.terminal

    @property
    def status(self) -> TaskStatus:
        """The task's status; PENDING while the workflow has not created it yet."""
        record = self.app.store.get(self.id)
        return TaskStatus.PENDING if record is None else record.status

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(
            f"workflow {self.workflow_id}: {self.role} {self.name} ({self.id}) is not created yet (its "
            "earlier tasks still run; wait() or get() wait for it), or its record expired"
        )

    def wait(self, timeout: float | None = None) -> TaskResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while self.app.store.get(self.id) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(
                    f"workflow {self.workflow_id}: {self.role} {self.name} ({self.id}) was not created "
                    f"within {timeout} s; its earlier tasks still run, or no worker consumes their queue"
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, _POLL_MAX)
        return super().wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    async def await_result(self, timeout: float | None = None) -> TaskResult:
        import asyncio

        return await asyncio.to_thread(self.wait, timeout)


class WorkflowHandle(CreatedLaterHandle[R]):
    """The handle of a chain or a chord: the task that ends it, which the workflow creates later.

    `wait()`/`get()` wait for that task to be created, then for its outcome; a failed step or member
    surfaces as that task's `TaskFailed`, naming the step or member. `cancel()` cancels the workflow's
    tasks that exist and have not ended (a chain's current step, a chord's members), which fails it.
    """

    def __init__(
        self, app: Decortask, task_id: str, name: str, workflow_id: str, parts: Sequence[str] = ()
    ) -> None:
        super().__init__(app, task_id, name, workflow_id)
        #: Ids of every task the workflow may create (its steps, members and callbacks), in order.
        self.parts = tuple(parts)

    def cancel(self) -> bool:
        """Cancel every task of the workflow that exists and has not ended; True if any was cancelled.

        A cancelled step or member ends CANCELLED, and the workflow fails naming it (a chain's later steps
        and a chord's callback never run). A chain step about to be created as this runs is not seen.
        """
        return cancel_workflow(self.app, self.workflow_id)[0] > 0


class GroupHandle:
    """The members' handles of a group, in order: a task's, a chain's or chord's (`WorkflowHandle`), or a
    nested group's (`GroupHandle`)."""

    def __init__(
        self,
        group_id: str,
        handles: Sequence[Member],
        app: Decortask | None = None,
        parts: Sequence[str] = (),
    ) -> None:
        self.id = group_id
        self.handles = list(handles)
        self.app = app
        #: Ids of every task the group's workflow may create (nested members' included), in order.
        self.parts = tuple(parts)

    def __repr__(self) -> str:
        return f"<GroupHandle {self.id}: {len(self.handles)} tasks>"

    def __len__(self) -> int:
        return len(self.handles)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.handles)

    def __getitem__(self, index: int) -> Member:
        return self.handles[index]

    def wait(self, timeout: float | None = None) -> list[Any]:
        """Every member's terminal snapshot (a list for a nested group), in order; `WaitTimeout` if they
        have not all ended in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [h.wait(_left(deadline)) for h in self.handles]

    def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; raises the first failed member's `TaskFailed`/`TaskCancelled`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [h.get(_left(deadline)) for h in self.handles]

    def done(self) -> bool:
        return all(handle.done() for handle in self.handles)

    def cancel(self) -> int:
        """Cancel every task of the group that has not ended, nested members' included (pending ones never
        run); how many were cancelled."""
        if self.app is None:
            return sum(1 for handle in self.handles if isinstance(handle, TaskHandle) and handle.cancel())
        return cancel_workflow(self.app, self.id)[0]


#: A group's member's handle.
Member = TaskHandle[Any] | GroupHandle


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def handle_for(app: Decortask, node: Node, node_id: str, root: str) -> Any:
    """The handle of `node` (id `node_id`, in workflow `root`), once launched: a `WorkflowHandle` of the
    task that ends it, or a `GroupHandle` for a group (nested as its groups are)."""
    tasks = names_and_ids(node, node_id)
    names = dict((task_id, name) for name, task_id in tasks)
    parts = [task_id for _, task_id in tasks]
    shared = tuple(parts)  # one tuple for every member's handle, however large the group

    def build(final: Any) -> Member:
        if isinstance(final, list):
            return GroupHandle(node_id, [build(one) for one in final], app, parts)
        return WorkflowHandle(app, final, names[final], root, shared)

    return build(resolve(shape(node), node_id))
