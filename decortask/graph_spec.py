"""A graph's shape (`decortask.Graph`): its named nodes, their dependencies, and the JSON that carries it.

Every node's message and record hold the part of the graph that follows it (`{"graph": {"id", "node",
"anchor", "nodes"}}` in their `workflow` field, DESIGN §5; the anchor's, the whole graph), so whatever worker
ends a node can find the nodes that wait for it; nothing about a graph lives in a worker's memory. A node's
task id is derived from the graph's id and the node's name (`node_id`), so each node is created once, and
each node that waits for others has one join in the store (`join_id`, the chords' atomic counter,
`store/workflow_state.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .canvas import Signature, derived_id
from .errors import GraphError
from .store.workflow_state import graph_join_id as join_id

__all__ = ["GraphNode", "GraphSpec", "join_id", "node_id", "ordered"]


@dataclass(frozen=True)
class GraphNode:
    """One node: its name, its call, the nodes it waits for, and whether it is a finally node.

    Attributes:
        name: the node's name, a Python identifier (its result is passed to dependents under it).
        sig: the task call; `.si()` gets no dependency results.
        requires: nodes that must succeed for this one to run (else it is skipped).
        optional: nodes this one waits for and runs after whatever their outcome.
        finally_: a finally node: it runs once every node in `requires` has ended, whatever their outcome
            and even if the graph was cancelled.
    """

    name: str
    sig: Signature[Any]
    requires: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    finally_: bool = False

    @property
    def deps(self) -> tuple[str, ...]:
        """Every node this one waits for, in join order (a dependency's index is its member in the join)."""
        return self.requires + self.optional

    def blocking(self) -> tuple[str, ...]:
        """The dependencies whose failure skips this node (none for a finally node)."""
        return () if self.finally_ else self.requires

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "task": self.sig.to_dict(),
            "requires": list(self.requires),
        }
        if self.optional:
            data["optional"] = list(self.optional)
        if self.finally_:
            data["finally"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any) -> GraphNode:
        """The node `to_dict` wrote; `GraphError` for anything else (a forged message)."""
        if not isinstance(data, dict):
            raise GraphError(f"a graph node must be a JSON object, got {type(data).__name__}")
        return cls(
            str(data["name"]),
            Signature.from_dict(data["task"]),
            _names(data.get("requires", [])),
            _names(data.get("optional", [])),
            bool(data.get("finally", False)),
        )


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise GraphError(f"a graph node's dependencies must be a list of names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class GraphSpec:
    """A graph, or the part of it one node's message carries: its id, its nodes in an order where each
    comes after its dependencies, and its anchor (the first node, which carries the whole graph).

    A node's message and record carry only the nodes it leads to (itself and every node after it), which
    is all that deciding what follows it needs; the anchor's carry every node, so the whole graph (for a
    handle, the dashboard) is read from the anchor's record (`GraphSpec.whole`). This keeps a graph of n
    nodes from costing n copies of itself (a fan-in of 300 nodes would carry 300 x 300 nodes).
    """

    id: str
    nodes: tuple[GraphNode, ...]
    anchor: str = ""

    def node(self, name: str) -> GraphNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise GraphError(f"graph {self.id} has no node {name!r}")

    def dependents(self, name: str) -> list[GraphNode]:
        """The nodes that wait for node `name`."""
        return [node for node in self.nodes if name in node.deps]

    def downstream(self, name: str) -> list[GraphNode]:
        """Node `name` and every node after it, in this spec's order."""
        reached = {name}
        for node in self.nodes:  # dependencies come first: one pass reaches everything after `name`
            if any(dep in reached for dep in node.deps):
                reached.add(node.name)
        return [node for node in self.nodes if node.name in reached]

    def node_ids(self) -> dict[str, str]:
        """Each node's task id, by name."""
        return {node.name: node_id(self.id, node.name) for node in self.nodes}

    def workflow(self, name: str) -> dict[str, Any]:
        """The `workflow` field of node `name`'s message and record: the nodes it leads to (every node,
        for the anchor)."""
        anchor = self.anchor or self.nodes[0].name
        nodes = self.nodes if name == anchor else self.downstream(name)
        return {
            "graph": {
                "id": self.id,
                "node": name,
                "anchor": anchor,
                "nodes": [node.to_dict() for node in nodes],
            }
        }

    @classmethod
    def from_workflow(cls, data: Any) -> tuple[GraphSpec, str]:
        """The graph (or its part) and the node's name of a `workflow["graph"]` that `workflow` wrote."""
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise GraphError(f"a graph's workflow field is malformed: {data!r:.200}")
        nodes = tuple(GraphNode.from_dict(node) for node in data["nodes"])
        name, anchor = str(data.get("node")), str(data.get("anchor") or "")
        spec = cls(str(data["id"]), nodes, anchor)
        if not anchor or name == anchor:  # the whole graph (before anchors, every node carried it): check it
            checked = ordered(nodes)
            spec = cls(spec.id, checked, anchor or (checked[0].name if checked else ""))
        spec.node(name)
        return spec, name

    @classmethod
    def whole(cls, data: Any, record_of: Callable[[str], Any]) -> GraphSpec:
        """The whole graph a node's `workflow["graph"]` belongs to, read from its anchor's record (through
        `record_of(task_id)`) unless `data` is the whole graph; the part `data` holds if that record is gone."""
        spec, name = cls.from_workflow(data)
        if name == spec.anchor:
            return spec
        anchor = record_of(node_id(spec.id, spec.anchor))
        found = (
            anchor.workflow.get("graph") if anchor is not None and isinstance(anchor.workflow, dict) else None
        )
        if isinstance(found, dict) and found.get("node") == spec.anchor and found.get("id") == spec.id:
            return cls.from_workflow(found)[0]
        return spec  # the anchor's record is gone (expired): the part this node knows
        anchor = record_of(node_id(spec.id, spec.anchor))
        found = (
            anchor.workflow.get("graph") if anchor is not None and isinstance(anchor.workflow, dict) else None
        )
        if isinstance(found, dict):
            whole, _ = cls.from_workflow(found)
            if whole.complete:
                return whole
        return spec


def node_id(graph_id: str, name: str) -> str:
    """The task id of node `name` of graph `graph_id`."""
    return derived_id(graph_id, f"node:{name}")


def ordered(nodes: Iterable[GraphNode]) -> tuple[GraphNode, ...]:
    """`nodes` in an order where each comes after its dependencies, checked.

    Raises:
        GraphError: a name that is not an identifier or is used twice, a node waiting for itself, for a
            name listed twice, or for a node the graph does not have, or a cycle (named).
    """
    nodes = list(nodes)
    by_name: dict[str, GraphNode] = {}
    for node in nodes:
        if not node.name.isidentifier():
            raise GraphError(
                f"graph node name {node.name!r} is not a Python identifier; its result is passed to the nodes "
                "after it as a keyword argument of that name, so name it like a parameter"
            )
        if node.name in by_name:
            raise GraphError(f"the graph has two nodes named {node.name!r}; give each node its own name")
        by_name[node.name] = node
    for node in nodes:
        _check_deps(node, by_name)
    done: list[GraphNode] = []
    state: dict[str, int] = {}  # 1: being visited, 2: placed

    def visit(node: GraphNode, path: Sequence[str]) -> None:
        if state.get(node.name) == 2:
            return
        if state.get(node.name) == 1:
            cycle = [*path[path.index(node.name) :], node.name]
            raise GraphError(f"the graph has a cycle: {' -> '.join(cycle)}; a node cannot wait for itself")
        state[node.name] = 1
        for dep in node.deps:
            visit(by_name[dep], [*path, node.name])
        state[node.name] = 2
        done.append(node)

    for node in nodes:
        visit(node, [])
    return tuple(done)


def _check_deps(node: GraphNode, by_name: dict[str, GraphNode]) -> None:
    seen: set[str] = set()
    for dep in node.deps:
        if dep in seen:
            raise GraphError(f"graph node {node.name!r} lists {dep!r} twice (in requires= and optional=?)")
        seen.add(dep)
        if dep == node.name:
            raise GraphError(
                f"graph node {node.name!r} waits for itself; remove it from its own dependencies"
            )
        if dep not in by_name:
            raise GraphError(
                f"graph node {node.name!r} waits for {dep!r}, which the graph has no node named; "
                f"its nodes are {', '.join(sorted(by_name))}"
            )
    clash = sorted(set(node.deps) & set(node.sig.kwargs)) if not node.sig.immutable else []
    if clash:
        raise GraphError(
            f"graph node {node.name!r}: its keyword argument(s) {', '.join(clash)} are also dependencies, whose "
            "results are passed under those names; rename one, or use .si() to take no results"
        )
