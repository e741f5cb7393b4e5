"""Running workflows on the workers: what follows a task of a `chain`, a `group` or a `chord` (built in
`canvas.py`, nested to any depth), or of a graph (`graph_run.py`).

Every piece of a workflow's state is in the broker's messages and in the store, never in a worker's memory:

- A chain's remaining steps travel in the message of the step that runs (its `workflow` field, DESIGN §5),
  and in that task's record, so a message rebuilt from the record (a requeued attempt) keeps them; so does
  what follows a nested chain, group or chord once it has ended (the frames of `canvas_launch.py`).
- When a delivery of a workflow's message leaves its task's record terminal, `continue_workflow` (called for
  every such delivery by `delivery.process_delivery`, before the message is acked) creates what follows:
  the chain's next step, or the chord's callback once the chord's join (an atomic counter in the store,
  `store/workflow_state.py`) counts every member (`canvas_launch.settle`, with a `WorkerSender`). What follows has an id derived from the workflow's id
  (`canvas.derived_id`), so a second creation fails in the store and runs nothing twice.
- A worker killed between writing the outcome and creating what follows has not acked the message: its
  redelivery finds the record terminal (a duplicate, not run again) and creates the missing continuation;
  so does the sweep of `followups.py` in every worker's reaper loop, a few seconds after the worker died
  (the outcome marked the task "continuation pending"), without waiting for the broker's redelivery.
- A failed step (FAILED, CANCELLED, INTERRUPTED) ends the chain: its last step's record is written FAILED
  (reason `workflow_failed`) naming the step, and the steps between never run. A failed chord member does
  the same to the callback, unless the chord passes failures to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from .canvas import Signature
from .canvas_launch import NO_VALUE, Node, Outcome, derived_id, outcome_of, settle
from .continuations import Write
from .continuations import create as _create
from .continuations import write_unrun as _fail
from .errors import ConfigurationError
from .graph_run import node_ended
from .producer import Lineage
from .states import TaskStatus
from .store.base import TaskRecord
from .store.follow_state import FollowStore
from .store.workflow_state import WorkflowStore

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.worker")


def continue_workflow(app: Decortask, task_id: str, spec: dict[str, Any], write: Write) -> None:
    """Create what follows task `task_id` if its record is terminal (a chain's next step, a chord's
    callback, what follows a nested workflow, a graph's dependents, or their FAILED records).

    Called after every delivery of a message with a `workflow` (`spec`), and by `recovery` when it ends an
    interrupted attempt of such a task. Idempotent: what it creates has a derived id, so running it again
    (a redelivered message) creates what a killed worker left out and nothing twice.
    """
    record = cast("TaskRecord | None", write(lambda: app.store.get(task_id)))
    if record is None or not record.status.terminal:
        return
    try:
        settle(WorkerSender(app, write), spec, outcome_of(record))
        if isinstance(spec.get("graph"), dict):
            node_ended(app, record, spec["graph"], write)
        _follow_links(app, record, spec, write)
        if isinstance(spec.get("spawn"), dict):  # a spawned child: to its parent, or late (late_results.py)
            from .late_results import child_ended

            child_ended(app, record, spec["spawn"], write)
    except (ConfigurationError, KeyError, TypeError, ValueError, IndexError) as exc:
        # A malformed workflow field (a forged or foreign message): nothing can be derived from it.
        logger.error(
            "task %s: its message's workflow field is malformed (%s); nothing follows it", record.id, exc
        )
    _followed(app, task_id, write)


class WorkerSender:
    """How a worker launches and settles a workflow's parts (`canvas_launch.Sender`): each task is created
    once (`continuations.create`), every store call made patiently (`write`)."""

    def __init__(self, app: Decortask, write: Write) -> None:
        self.app = app
        self.write = write

    def send(self, leaf: Node, value: Any, lineage: Lineage) -> None:
        sig = Signature.from_dict(leaf)
        call = sig if value is NO_VALUE else sig.with_parent_result(value)
        if _create(self.app, call, lineage, self.write) and lineage.task_id is not None:
            # It could not be enqueued and is written FAILED: what follows it fails with it.
            failed = cast("TaskRecord | None", self.write(lambda: self.app.store.get(str(lineage.task_id))))
            if failed is not None:
                settle(
                    self,
                    lineage.workflow,
                    Outcome(False, None, failed.id, failed, failed.error_message or ""),
                )

    def fail(self, leaf: Node, why: str, cause: TaskRecord | None, lineage: Lineage) -> None:
        assert lineage.task_id is not None
        sig = Signature.from_dict(leaf)
        _fail(
            self.app,
            lineage.task_id,
            sig,
            why,
            cause,
            lineage.root_id or "",
            self.write,
            workflow=lineage.workflow,
        )

    def join(self, join_id: str, member: int) -> int:
        store = self.app.store
        if not isinstance(store, WorkflowStore):
            raise ConfigurationError(
                f"the store {type(store).__name__} keeps no workflow joins; groups and chords need one"
            )
        return int(self.write(lambda: store.join_member(join_id, member)))

    def records(self, task_ids: list[str]) -> list[TaskRecord | None]:
        store = self.app.store
        return cast("list[TaskRecord | None]", self.write(lambda: [store.get(one) for one in task_ids]))


def _followed(app: Decortask, task_id: str, write: Write) -> None:
    """Clear the task's "continuation pending" mark: what follows it exists (`followups.py`)."""
    store = app.store
    if isinstance(store, FollowStore):
        write(lambda: store.follow_done(task_id))


def _follow_links(app: Decortask, record: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    """Send the `link=` signatures of a task that succeeded (its result first), or its `link_error=` ones
    (its id first), each once: their ids are derived from the task's id."""
    ok = record.status is TaskStatus.SUCCESS
    kind = "link" if ok else "link_error"
    for index, data in enumerate(spec.get(kind) or ()):
        sig = Signature.from_dict(data).with_parent_result(record.result if ok else record.id)
        lineage = Lineage(derived_id(record.id, f"{kind}:{index}"), record.id, record.root_id or record.id)
        _create(app, sig, lineage, write)
