"""The workflow a task belongs to, as the dashboard shows it: its members, their states, and its edges.

Read from the store only: a graph node's record carries the nodes after it, its anchor's the whole graph
(`graph_spec.py`); a chain step's
or chord member's record names its workflow's id and size, and the other members' ids are derived from it
(`canvas.derived_id`). A member not created yet shows as WAITING.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..canvas import derived_id
from ..errors import ConfigurationError
from ..graph import graph_status
from ..graph_spec import GraphSpec

if TYPE_CHECKING:
    from ..app import Decortask
    from ..store.base import TaskRecord

#: The state shown for a member whose record does not exist (yet).
WAITING = "WAITING"
#: Most members listed for a chain or a chord (a chord of 1,000 shows its first ones and says so).
MAX_MEMBERS = 200


def workflow_view(app: Decortask, record: TaskRecord) -> dict[str, Any] | None:
    """The view of `record`'s workflow, or None for a task in none the dashboard can draw.

    `{"kind": "graph" | "chain" | "chord" | "group", "id", "status", "nodes": [{"name", "task", "id",
    "status", "reason", "finally", "layer", "row"}], "edges": [{"from", "to", "kind", "implied"}], "more":
    int}`; `layer` is a node's column (after all it waits for) and `row` its place in it; an `implied` edge
    (a finally node's dependency that another of its dependencies comes after) is not drawn. A chain, chord
    or group is the workflow's outermost one (the one `root_id` names), drawn one level deep.
    """
    spec = record.workflow if isinstance(record.workflow, dict) else {}
    try:
        if isinstance(spec.get("graph"), dict):
            return _graph(app, spec["graph"])
        if record.root_id is None:
            return None
        root = record.root_id
        step = _frame(app, record, derived_id(root, "step:0"), "chain", root)
        if step is not None:
            return _members(app, "chain", root, int(step["size"]))
        member = _frame(app, record, derived_id(root, "member:0"), "chord", root)
        if member is not None:
            kind = "group" if member.get("callback") is None else "chord"
            return _members(app, kind, root, int(member["size"]))
        if derived_id(root, "member:0") == record.id or app.store.get(derived_id(root, "member:0")):
            return _members(app, "group", root, None)  # a group's members carry no frame: count them
    except (ConfigurationError, KeyError, TypeError, ValueError):
        return None  # a malformed workflow field: nothing to draw
    return None


def _frame(app: Decortask, record: TaskRecord, task_id: str, kind: str, root: str) -> dict[str, Any] | None:
    """The `kind` frame of task `task_id` if it belongs to the workflow `root` itself (not a nested one)."""
    head = record if record.id == task_id else app.store.get(task_id)
    frame = head.workflow.get(kind) if head is not None and isinstance(head.workflow, dict) else None
    return frame if isinstance(frame, dict) and str(frame.get("id")) == root else None


def _graph(app: Decortask, data: dict[str, Any]) -> dict[str, Any]:
    spec = GraphSpec.whole(data, app.store.get)
    ids = spec.node_ids()
    records = {name: app.store.get(task_id) for name, task_id in ids.items()}
    layers: dict[str, int] = {}
    for node in spec.nodes:  # in dependency order: a node's layer is one past its deepest dependency's
        layers[node.name] = 1 + max((layers[dep] for dep in node.deps), default=-1)
    rows: dict[int, int] = {}
    nodes = []
    for node in spec.nodes:
        got = records[node.name]
        layer = layers[node.name]
        rows[layer] = rows.get(layer, -1) + 1
        nodes.append(
            {
                "name": node.name,
                "task": node.sig.name,
                "id": ids[node.name],
                "status": got.status.value if got else WAITING,
                "reason": got.reason if got else None,
                "finally": node.finally_,
                "layer": layer,
                "row": rows[layer],
            }
        )
    ancestors: dict[str, set[str]] = {}
    for node in spec.nodes:  # in dependency order: each node's ancestors are known before it
        ancestors[node.name] = set(node.deps).union(*(ancestors[dep] for dep in node.deps))
    edges = [
        {
            "from": dep,
            "to": node.name,
            "kind": _edge_kind(node.finally_, dep in node.requires),
            # A finally node follows every node by default: drawn, only from those no other of its
            # dependencies comes after, or the picture is all arrows into it.
            "implied": node.finally_ and any(dep in ancestors[other] for other in node.deps),
        }
        for node in spec.nodes
        for dep in node.deps
    ]
    status = graph_status(r.status if r else None for r in records.values())
    return {"kind": "graph", "id": spec.id, "status": status.value, "nodes": nodes, "edges": edges, "more": 0}


def _edge_kind(finally_: bool, required: bool) -> str:
    if finally_:
        return "finally"
    return "required" if required else "optional"


def _members(app: Decortask, kind: str, root: str, size: int | None) -> dict[str, Any]:
    """A chain's steps one after another, or a chord's or group's members side by side (then a chord's
    callback). A group of unknown `size` is read member by member until one is missing."""
    step = "step" if kind == "chain" else "member"
    ids: list[str] = []
    records: list[TaskRecord | None] = []
    while len(ids) < min(size if size is not None else MAX_MEMBERS + 1, MAX_MEMBERS):
        task_id = derived_id(root, f"{step}:{len(ids)}")
        got = app.store.get(task_id)
        if got is None and size is None:
            break
        ids.append(task_id)
        records.append(got)
    total = size if size is not None else len(ids)
    names = [f"{step} {i + 1}" for i in range(len(ids))]
    if kind == "chord":
        names.append("callback")
        ids.append(derived_id(root, "callback"))
        records.append(app.store.get(ids[-1]))
    nodes = []
    for index, (name, task_id, got) in enumerate(zip(names, ids, records, strict=True)):
        callback = name == "callback"
        nodes.append(
            {
                "name": name,
                "task": got.name if got else "",
                "id": task_id,
                "status": got.status.value if got else WAITING,
                "reason": got.reason if got else None,
                "finally": False,
                "layer": index if kind == "chain" else int(callback),
                "row": 0 if kind == "chain" or callback else index,
            }
        )
    if kind == "chain":
        pairs = [(names[i], names[i + 1]) for i in range(len(names) - 1)]
    else:
        pairs = [(name, "callback") for name in names if kind == "chord" and name != "callback"]
    edges = [{"from": a, "to": b, "kind": "required", "implied": False} for a, b in pairs]
    if kind == "group":
        status = graph_status(r.status if r else None for r in records).value
    else:
        final = app.store.get(derived_id(root, f"step:{total - 1}") if kind == "chain" else ids[-1])
        status = final.status.value if final is not None and final.status.terminal else "RUNNING"
    more = total - (len(names) - (kind == "chord"))
    return {"kind": kind, "id": root, "status": status, "nodes": nodes, "edges": edges, "more": more}
