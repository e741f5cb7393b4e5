"""Graphs: named tasks with dependencies, results passed by name, and finally nodes (docs/workflows.md).

    g = Graph()
    g.add("fetch", fetch.s(url))
    g.add("parse", parse.s(), requires=["fetch"])            # parse(fetch=<fetch's result>)
    g.add("thumbs", thumbs.s(), requires=["fetch"], optional=["parse"])
    g.add_finally("cleanup", cleanup.si())                   # after every other node, whatever happened
    handle = g.apply_async()
    handle.get(timeout=60)                                   # {"fetch": ..., "parse": ..., ...}

What runs a graph on the workers is `graph_run.py`; its shape and JSON, `graph_spec.py`. The graph's
status is read from its nodes' records in the store (`GraphHandle.status`), never kept anywhere else.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .canvas import Signature
from .canvas_handles import CreatedLaterHandle
from .errors import GraphError, GraphFailed, TaskNotFound, WaitTimeout
from .graph_run import node_ended, write_skipped
from .graph_spec import GraphNode, GraphSpec, node_id, ordered
from .handle import TaskHandle
from .producer import Lineage
from .states import TaskStatus
from .store.base import TaskRecord
from .text_enum import TextEnum

if TYPE_CHECKING:
    from .app import Decortask

__all__ = ["Graph", "GraphHandle", "GraphStatus", "graph_status"]

#: Most seconds between two reads of the nodes' records while waiting for a graph.
_POLL_MAX = 0.2


class GraphStatus(TextEnum):
    """A graph's status, read from its nodes' records."""

    #: Some node has not ended (or has not been created yet).
    RUNNING = "RUNNING"
    #: Every node succeeded.
    SUCCESS = "SUCCESS"
    #: Every node ended, and at least one ended FAILED or INTERRUPTED.
    FAILED = "FAILED"
    #: Every node ended, none FAILED or INTERRUPTED, and at least one was cancelled or skipped.
    CANCELLED = "CANCELLED"


def graph_status(states: Iterable[TaskStatus | None]) -> GraphStatus:
    """The graph's status from its nodes' statuses (None: a node not created yet)."""
    states = list(states)
    if any(state is None or not state.terminal for state in states):
        return GraphStatus.RUNNING
    if any(state in (TaskStatus.FAILED, TaskStatus.INTERRUPTED) for state in states):
        return GraphStatus.FAILED
    if any(state is TaskStatus.CANCELLED for state in states):
        return GraphStatus.CANCELLED
    return GraphStatus.SUCCESS


class Graph:
    """A graph of named nodes, built with `add` and `add_finally`, then started with `apply_async`.

    A node starts once every node it waits for has ended; it gets their results as keyword arguments
    named after them (a dependency that did not succeed is passed as None), unless its signature is
    immutable (`.si()`). A node whose required dependency did not succeed is skipped (CANCELLED, reason
    `skipped`), and so are the nodes requiring it; optional dependencies never skip it. A finally node
    runs once the nodes it follows have ended, whatever their outcome, even if the graph was cancelled.
    """

    def __init__(self) -> None:
        self._nodes: list[GraphNode] = []

    def __repr__(self) -> str:
        return f"Graph({', '.join(node.name for node in self._nodes)})"

    @property
    def nodes(self) -> tuple[GraphNode, ...]:
        return tuple(self._nodes)

    def add(
        self,
        name: str,
        sig: Signature[Any],
        *,
        requires: Iterable[str] = (),
        optional: Iterable[str] = (),
    ) -> Graph:
        """Add node `name` running `sig` after the nodes it `requires` (which must succeed, else it is
        skipped) and its `optional` ones (whatever their outcome). Returns the graph."""
        return self._add(GraphNode(name, _sig(name, sig), _list(requires), _list(optional)))

    def add_finally(self, name: str, sig: Signature[Any], *, after: Iterable[str] | None = None) -> Graph:
        """Add finally node `name`: it runs once the nodes `after` (by default every node added so far that
        is not a finally node) have ended, whatever their outcome. Returns the graph."""
        follows = _list(after) if after is not None else tuple(n.name for n in self._nodes if not n.finally_)
        return self._add(GraphNode(name, _sig(name, sig), follows, (), finally_=True))

    def _add(self, node: GraphNode) -> Graph:
        if any(existing.name == node.name for existing in self._nodes):
            raise GraphError(f"the graph has a node named {node.name!r} already; give each node its own name")
        self._nodes.append(node)
        return self

    def validate(self, app: Decortask | None = None) -> tuple[GraphNode, ...]:
        """The nodes in dependency order, each checked against its task in `app` (`apply_async` does this).

        Raises:
            GraphError: an empty graph, a bad or repeated name, an unknown dependency, a cycle, or a node
                whose task does not take its arguments plus its dependencies' results by name.
            UnknownTaskError: a node's task is not registered in `app`.
        """
        if not self._nodes:
            raise GraphError("the graph has no nodes; add some with graph.add(name, task.s(...))")
        nodes = ordered(self._nodes)
        app = _current(app)
        for node in nodes:
            task = app.registry.get(node.sig.name)
            given = dict(node.sig.kwargs)
            if not node.sig.immutable:
                given.update({dep: None for dep in node.deps})
            try:
                task.bind_arguments(tuple(node.sig.args), given)
            except TypeError as exc:
                plus = (
                    " plus its dependencies' results as keyword arguments named after them (.si() passes none)"
                    if node.deps and not node.sig.immutable
                    else ""
                )
                raise GraphError(
                    f"graph node {node.name!r}: {exc}; its task is called with its signature's arguments{plus}"
                ) from None
        return nodes

    def apply_async(self, *, app: Decortask | None = None) -> GraphHandle:
        """Validate the graph and enqueue its nodes that wait for nothing; the rest follow as nodes end."""
        app = _current(app)
        nodes = self.validate(app)
        spec = GraphSpec(uuid.uuid4().hex, tuple(_routed(node, app) for node in nodes), nodes[0].name)
        for node in spec.nodes:
            if not node.deps:
                lineage = Lineage(node_id(spec.id, node.name), None, spec.id, spec.workflow(node.name))
                node.sig.send(app, lineage)
        return GraphHandle(app, spec)

    def delay(self) -> GraphHandle:
        """`apply_async()`."""
        return self.apply_async()


def _sig(name: str, sig: Any) -> Signature[Any]:
    if not isinstance(sig, Signature):
        raise GraphError(f"graph node {name!r}: give it a signature (task.s(...)), got {sig!r}")
    return sig


def _list(names: Iterable[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        return (names,)  # requires="fetch": one name, not its letters
    return tuple(names)


def _routed(node: GraphNode, app: Decortask) -> GraphNode:
    return GraphNode(node.name, node.sig.routed(app), node.requires, node.optional, node.finally_)


def _current(app: Decortask | None) -> Decortask:
    from .app import current_app

    return app or current_app()


class GraphHandle:
    """A started graph: its nodes' handles by name, its status, its results, and `cancel()`."""

    def __init__(self, app: Decortask, spec: GraphSpec) -> None:
        self.app = app
        self.spec = spec
        self.id = spec.id
        #: Each node's task id, by name.
        self.node_ids = spec.node_ids()

    @classmethod
    def of_task(cls, app: Decortask, task_id: str) -> GraphHandle:
        """The handle of the graph task `task_id` is a node of (any node: each record carries its graph).

        Raises:
            TaskNotFound: no such task in the store.
            GraphError: the task is not a graph's node.
        """
        record = app.store.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task {task_id} in the store {app.store_url_masked}")
        data = record.workflow.get("graph") if isinstance(record.workflow, dict) else None
        if not isinstance(data, dict):
            raise GraphError(f"task {task_id} ({record.name}) is not a node of a graph")
        return cls(app, GraphSpec.whole(data, app.store.get))

    def __repr__(self) -> str:
        return f"<GraphHandle {self.id}: {len(self.node_ids)} nodes>"

    def __getitem__(self, name: str) -> TaskHandle[Any]:
        """Node `name`'s handle. Its record exists once its dependencies have ended: until then `status`
        is PENDING, and `wait()`/`get()` wait for it to be created, then for its outcome."""
        return CreatedLaterHandle(
            self.app, self.node_ids[name], self.spec.node(name).sig.name, self.id, role=f"node {name!r}"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.node_ids)

    def records(self) -> dict[str, TaskRecord | None]:
        """Each node's record by name; None for a node not created yet."""
        store = self.app.store
        return {name: store.get(task_id) for name, task_id in self.node_ids.items()}

    def states(self) -> dict[str, TaskStatus | None]:
        """Each node's status by name; None for a node not created yet."""
        return {name: (r.status if r else None) for name, r in self.records().items()}

    def status(self) -> GraphStatus:
        """RUNNING until every node has ended, then SUCCESS, FAILED or CANCELLED (`GraphStatus`)."""
        return graph_status(self.states().values())

    def done(self) -> bool:
        return self.status() is not GraphStatus.RUNNING

    def wait(self, timeout: float | None = None) -> GraphStatus:
        """The graph's final status once every node has ended; `WaitTimeout` if not within `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            states = self.states()
            status = graph_status(states.values())
            if status is not GraphStatus.RUNNING:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                waiting = ", ".join(name for name, s in states.items() if s is None or not s.terminal)
                raise WaitTimeout(
                    f"graph {self.id}: not ended within {timeout} s; still waiting for {waiting} (a node "
                    "still runs, or no worker consumes its queue)"
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, _POLL_MAX)

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """Every node's result by name once the graph succeeded.

        Raises:
            GraphFailed: the graph ended FAILED or CANCELLED; it names the nodes that did not succeed.
            WaitTimeout: the graph has not ended within `timeout` seconds.
        """
        status = self.wait(timeout)
        records = self.records()
        if status is GraphStatus.SUCCESS:
            return {name: record.result for name, record in records.items() if record is not None}
        raise _failed(self.id, status, records)

    def cancel(self) -> int:
        """Cancel the nodes that have not ended: waiting ones never run, running ones are asked to stop,
        and those not created yet are written CANCELLED (skipped). Finally nodes are left to run once the
        nodes they follow have ended. How many nodes were cancelled."""
        from .control import request_cancel

        write = _direct
        cancelled = 0
        for node in self.spec.nodes:
            if node.finally_:
                continue
            task_id = self.node_ids[node.name]
            if self.app.store.get(task_id) is None:
                why = f"graph {self.id}: node {node.name} skipped: the graph was cancelled before it started"
                write_skipped(self.app, self.spec, node, why, None, write)
                written = self.app.store.get(task_id)
                if written is not None and written.error_message == why:  # not created by a worker meanwhile
                    cancelled += 1
                    graph = self.spec.workflow(node.name)["graph"]
                    node_ended(self.app, written, graph, write)  # no message will report it
                    continue
            record = self.app.store.get(task_id)  # waiting or running (or just created by a worker): stop it
            if record is not None and not record.status.terminal:
                with contextlib.suppress(TaskNotFound):  # its record expired as we looked
                    cancelled += bool(request_cancel(self.app, task_id))
        return cancelled


def _direct(step: Any) -> Any:
    return step()


def _failed(graph_id: str, status: GraphStatus, records: dict[str, TaskRecord | None]) -> GraphFailed:
    """The error of a graph that did not succeed, naming its failed nodes first, then the cancelled ones."""
    states = {name: (r.status.value if r else "MISSING") for name, r in records.items()}
    bad = [(n, r) for n, r in records.items() if r is not None and r.status is not TaskStatus.SUCCESS]
    bad.sort(key=lambda item: item[1].status is TaskStatus.CANCELLED)
    parts = []
    for name, record in bad[:5]:
        error = f": {record.error_type}: {record.error_message}" if record.error_type else ""
        reason = f" ({record.reason})" if record.reason else ""
        parts.append(
            f"node {name} ({record.name}, task {record.id}) ended {record.status.value}{reason}{error}"
        )
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return GraphFailed(graph_id, status.value, "; ".join(parts) + more, states)
