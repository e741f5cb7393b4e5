"""Running workflows on the workers: what follows a task of a `chain` or a `chord` (built in `canvas.py`).

Every piece of a workflow's state is in the broker's messages and in the store, never in a worker's memory:

- A chain's remaining steps travel in the message of the step that runs (its `workflow` field, DESIGN §5),
  and in that task's record, so a message rebuilt from the record (a requeued attempt) keeps them.
- When a delivery of a workflow's message leaves its task's record terminal, `continue_workflow` (called for
  every such delivery by `delivery.process_delivery`, before the message is acked) creates what follows:
  the chain's next step, or the chord's callback once the chord's join (an atomic counter in the store,
  `store/workflow_state.py`) counts every member. What follows has an id derived from the workflow's id
  (`canvas.derived_id`), so a second creation fails in the store and runs nothing twice.
- A worker killed between writing the outcome and creating what follows has not acked the message: its
  redelivery finds the record terminal (a duplicate, not run again) and creates the missing continuation.
- A failed step (FAILED, CANCELLED, INTERRUPTED) ends the chain: its last step's record is written FAILED
  (reason `workflow_failed`) naming the step, and the steps between never run. A failed chord member does
  the same to the callback, unless the chord passes failures to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from .canvas import Signature, chain_spec, derived_id
from .continuations import Write
from .continuations import create as _create
from .continuations import describe as _describe
from .continuations import outcome_value as _value_for_callback
from .continuations import write_unrun as _fail
from .errors import ConfigurationError
from .graph_run import node_ended
from .producer import Lineage
from .states import TaskStatus
from .store.base import TaskRecord
from .store.workflow_state import WorkflowStore

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.worker")


def continue_workflow(app: Decortask, task_id: str, spec: dict[str, Any], write: Write) -> None:
    """Create what follows task `task_id` if its record is terminal (a chain's next step, a chord's
    callback, or their FAILED record).

    Called after every delivery of a message with a `workflow` (`spec`), and by `recovery` when it ends an
    interrupted attempt of such a task. Idempotent: what it creates has a derived id, so running it again
    (a redelivered message) creates what a killed worker left out and nothing twice.
    """
    record = cast("TaskRecord | None", write(lambda: app.store.get(task_id)))
    if record is None or not record.status.terminal:
        return
    try:
        if isinstance(spec.get("chain"), dict):
            _continue_chain(app, record, spec["chain"], write)
        if isinstance(spec.get("chord"), dict):
            _join_chord(app, record, spec["chord"], write)
        if isinstance(spec.get("graph"), dict):
            node_ended(app, record, spec["graph"], write)
        _follow_links(app, record, spec, write)
    except (ConfigurationError, KeyError, TypeError, ValueError) as exc:
        # A malformed workflow field (a forged or foreign message): nothing can be derived from it.
        logger.error(
            "task %s: its message's workflow field is malformed (%s); nothing follows it", record.id, exc
        )


def _continue_chain(app: Decortask, record: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    workflow_id, step, size = str(spec["id"]), int(spec["step"]), int(spec["size"])
    rest = [Signature.from_dict(data) for data in spec["rest"]]
    if not rest:
        return
    if record.status is not TaskStatus.SUCCESS:
        why = f"chain {workflow_id}: step {step + 1} of {size}, {_describe(record)}; the steps after it did not run"
        _fail(app, derived_id(workflow_id, f"step:{size - 1}"), rest[-1], why, record, workflow_id, write)
        return
    nxt = rest[0].with_parent_result(record.result)
    lineage = Lineage(
        derived_id(workflow_id, f"step:{step + 1}"),
        record.id,
        workflow_id,
        chain_spec(workflow_id, step + 1, size, rest[1:]),
    )
    _create(app, nxt, lineage, write)


def _follow_links(app: Decortask, record: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    """Send the `link=` signatures of a task that succeeded (its result first), or its `link_error=` ones
    (its id first), each once: their ids are derived from the task's id."""
    ok = record.status is TaskStatus.SUCCESS
    kind = "link" if ok else "link_error"
    for index, data in enumerate(spec.get(kind) or ()):
        sig = Signature.from_dict(data).with_parent_result(record.result if ok else record.id)
        lineage = Lineage(derived_id(record.id, f"{kind}:{index}"), record.id, record.root_id or record.id)
        _create(app, sig, lineage, write)


def _join_chord(app: Decortask, record: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    chord_id, member, size = str(spec["id"]), int(spec["member"]), int(spec["size"])
    callback = Signature.from_dict(spec["callback"])
    callback_id = derived_id(chord_id, "callback")
    pass_failures = bool(spec.get("pass_failures"))
    if record.status is not TaskStatus.SUCCESS and not pass_failures:
        why = (
            f"chord {chord_id}: member {member + 1} of {size}, {_describe(record)}; the callback did not run"
        )
        _fail(app, callback_id, callback, why, record, chord_id, write)
        return
    store = app.store
    if not isinstance(store, WorkflowStore):
        raise ConfigurationError(f"the store {type(store).__name__} keeps no workflow joins; chords need one")
    ended = int(write(lambda: store.join_member(chord_id, member)))
    if ended < size:
        return
    ids = [derived_id(chord_id, f"member:{index}") for index in range(size)]
    found = cast("list[TaskRecord | None]", write(lambda: [store.get(member_id) for member_id in ids]))
    values = [
        _value_for_callback(got, member_id, pass_failures) for got, member_id in zip(found, ids, strict=True)
    ]
    _create(app, callback.with_parent_result(values), Lineage(callback_id, record.id, chord_id), write)
