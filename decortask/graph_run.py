"""Running graphs (`decortask.Graph`): what happens when a node ends, on whatever worker or client ends it.

`node_ended` reports the node to the join of every node that waits for it (the store's atomic counter,
`store/workflow_state.py`, the one chords use). The one report that completes a join (the last dependency
to end) decides that node (`settle`): it is created with its dependencies' results as keyword arguments,
or, if a dependency it requires did not succeed, its record is written CANCELLED (reason `skipped`) and it
ends at once, which is reported the same way. A finally node is never skipped.

All of it is idempotent: a join counts a dependency once however often it is reported, a node's task id
is derived from the graph's (`graph_spec.node_id`), so it is created once, and a skipped node's end is
reported again each time it is decided. A redelivered message (its worker killed before the ack), the
reaper that ends an interrupted attempt, and a client cancelling the graph may all report the same end;
nothing runs twice and nothing is left waiting.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from .continuations import Write, create, describe, write_unrun
from .errors import ConfigurationError
from .graph_spec import GraphNode, GraphSpec, join_id, node_id
from .outcomes import Reason
from .producer import Lineage
from .states import TaskStatus
from .store.base import TaskRecord
from .store.workflow_state import WorkflowStore

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.worker")


def node_ended(app: Decortask, record: TaskRecord, data: dict[str, Any], write: Write) -> None:
    """Report that the node whose record is `record` (terminal) ended; decide each node it completes.

    Args:
        data: the node's `workflow["graph"]` (`GraphSpec.workflow`).
    """
    spec, name = GraphSpec.from_workflow(data)
    store = app.store
    if not isinstance(store, WorkflowStore):
        raise ConfigurationError(f"the store {type(store).__name__} keeps no workflow joins; graphs need one")
    for dependent in spec.dependents(name):
        if _join(store, spec.id, dependent, name, write) >= len(dependent.deps):
            settle(app, spec, dependent, record, write)


def write_skipped(
    app: Decortask, spec: GraphSpec, node: GraphNode, why: str, cause: TaskRecord | None, write: Write
) -> None:
    """Write node `node` CANCELLED (`skipped`) with `why`, unless its record exists: it never runs."""
    workflow = spec.workflow(node.name)
    task_id = node_id(spec.id, node.name)
    write_unrun(
        app,
        task_id,
        node.sig,
        why,
        cause,
        spec.id,
        write,
        workflow=workflow,
        status=TaskStatus.CANCELLED,
        reason=Reason.SKIPPED,
    )


def settle(app: Decortask, spec: GraphSpec, node: GraphNode, cause: TaskRecord | None, write: Write) -> None:
    """Create node `node` (every dependency ended) or write it skipped; then, if it has ended already
    (skipped now, or earlier by a cancel), report its end."""
    ids = {dep: node_id(spec.id, dep) for dep in node.deps}
    found = cast("dict[str, TaskRecord | None]", write(lambda: {d: app.store.get(i) for d, i in ids.items()}))
    task_id = node_id(spec.id, node.name)
    workflow = spec.workflow(node.name)
    failed = [dep for dep in node.blocking() if not _succeeded(found[dep])]
    if failed:
        dep, got = failed[0], found[failed[0]]
        what = describe(got) if got is not None else f"its record ({ids[dep]}) is gone"
        why = f"graph {spec.id}: node {node.name} skipped: the node {dep} it requires, {what}"
        write_skipped(app, spec, node, why, got, write)
    else:
        sig = node.sig
        if not sig.immutable:
            results = {
                dep: (got.result if got is not None and _succeeded(got) else None)
                for dep, got in found.items()
            }
            sig = replace(sig, kwargs={**sig.kwargs, **results})
        parent = cause.id if cause is not None else None
        create(app, sig, Lineage(task_id, parent, spec.id, workflow), write)
    now = cast("TaskRecord | None", write(lambda: app.store.get(task_id)))
    if now is not None and now.status.terminal and now.reason in (Reason.SKIPPED, Reason.WORKFLOW_FAILED):
        node_ended(app, now, workflow["graph"], write)  # never runs: nothing else reports its end


def _join(store: WorkflowStore, graph_id: str, node: GraphNode, dep: str, write: Write) -> int:
    """Report dependency `dep` of `node` ended; how many of its dependencies have ended."""
    member = node.deps.index(dep)
    return int(write(lambda: store.join_member(join_id(graph_id, node.name), member)))


def _succeeded(record: TaskRecord | None) -> bool:
    return record is not None and record.status is TaskStatus.SUCCESS
