"""A workflow as its records tell it: its tasks (`canvas_handles.workflow_records`, by their `root_id`) laid
out in its structure with each one's state (`decortask show`).

Nothing but the store is read: every task of a workflow carries the workflow's id as its `root_id`, and in
its `workflow` field the frames that say where it sits (`canvas_launch.py`: step `s` of `n` of chain `c`,
member `m` of group or chord `j`, and the same for the workflows around it, in `then`). Ids are derived
from the place (`derived_id`), so the tasks not created yet are known too, by their place and, where a
frame names it, their task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .canvas_launch import derived_id
from .states import TaskStatus
from .store.base import TaskRecord

#: Characters of an error message a line keeps.
_ERROR_WIDTH = 90


@dataclass
class _Node:
    """What the frames say of a chain, group or chord of the workflow: its kind, size, and the nodes
    (JSON) of its places that a frame names (a chain's steps to come, a chord's callback)."""

    kind: str
    size: int
    known: dict[str, Any] = field(default_factory=dict)


def _frames(records: Sequence[TaskRecord]) -> dict[str, _Node]:
    """Every chain, group and chord the records' frames name, by id."""
    nodes: dict[str, _Node] = {}
    for record in records:
        spec: Any = record.workflow
        while isinstance(spec, dict):
            chain, chord = spec.get("chain"), spec.get("chord")
            frame = chain if isinstance(chain, dict) else chord if isinstance(chord, dict) else None
            if frame is None or not isinstance(frame.get("id"), str):
                break
            try:
                _note(nodes, frame, chain is frame)
            except (TypeError, ValueError):  # a malformed frame: it shows nothing
                break
            spec = frame.get("then")
    return nodes


def _note(nodes: dict[str, _Node], frame: dict[str, Any], is_chain: bool) -> None:
    size = int(frame["size"])
    if is_chain:
        node = nodes.setdefault(frame["id"], _Node("chain", size))
        step = int(frame["step"])
        for offset, data in enumerate(frame.get("rest") or ()):
            node.known[f"step:{step + 1 + offset}"] = data
        return
    callback = frame.get("callback")
    node = nodes.setdefault(frame["id"], _Node("group" if callback is None else "chord", size))
    if callback is not None:
        node.known["callback"] = callback


def render(records: Sequence[TaskRecord], root_id: str, total: int | None = None) -> list[str]:
    """The workflow `root_id` as lines: a heading, then each task in the workflow's structure, one line
    each (place, task, id, state, and the error of one that failed), nested two spaces a level."""
    by_id = {record.id: record for record in records}
    nodes = _frames(records)
    lines: list[str] = []
    shown: set[str] = set()
    state = _state(records)
    # Once every task has ended, those not created never will be.
    unborn = "not created yet" if state == "RUNNING" else "never ran (the workflow ended)"
    if root_id in nodes:
        _tree(lines, shown, by_id, nodes, root_id, None, "", 1, unborn)
    else:  # an outermost group, or a task's links: no frame names the root; its tasks in order
        for index in range(len(records)):
            member = derived_id(root_id, f"member:{index}")
            if member in by_id or member in nodes:
                _tree(lines, shown, by_id, nodes, member, None, f"member {index + 1}", 1, unborn)
    rest = [record for record in records if record.id not in shown]
    for record in rest:  # links, and tasks of a structure the frames do not tell
        label = "root task" if record.id == root_id else "linked" if record.parent_id in by_id else "task"
        lines.append(_task_line(record, label, 1))
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status.value] = counts.get(record.status.value, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    more = f" (showing the first {len(records)} of {total})" if total and total > len(records) else ""
    head = f"workflow {root_id}: {state}; {len(records)} tasks{more}: {tally or 'none yet'}"
    return [head, *lines]


def _state(records: Sequence[TaskRecord]) -> str:
    if any(not record.status.terminal for record in records):
        return "RUNNING"
    if all(record.status is TaskStatus.SUCCESS for record in records):
        return "SUCCESS"
    return "ENDED (not every task succeeded)"


def _tree(
    lines: list[str],
    shown: set[str],
    by_id: dict[str, TaskRecord],
    nodes: dict[str, _Node],
    node_id: str,
    data: Any,
    label: str,
    depth: int,
    unborn: str,
) -> None:
    """Add node `node_id` (`data`: its JSON node when a frame named it) and what it holds; `unborn` is
    what a task not created says."""
    record = by_id.get(node_id)
    if record is not None:
        shown.add(node_id)
        lines.append(_task_line(record, label, depth))
        return
    node = nodes.get(node_id) or _from_data(data)
    if node is None:
        name = data.get("task") if isinstance(data, dict) else None
        lines.append(_line(depth, label, str(name or "?"), node_id, unborn))
        return
    noun = {"chain": "steps", "group": "members", "chord": "members and a callback"}[node.kind]
    lines.append(_line(depth, label, f"{node.kind} of {node.size} {noun}", node_id, ""))
    places = [f"step:{i}" if node.kind == "chain" else f"member:{i}" for i in range(node.size)]
    if node.kind == "chord":
        places.append("callback")
    for place in places:
        kind, _, index = place.partition(":")
        child_label = f"{kind} {int(index) + 1}/{node.size}" if index else kind
        child = derived_id(node_id, place)
        _tree(lines, shown, by_id, nodes, child, node.known.get(place), child_label, depth + 1, unborn)


def _from_data(data: Any) -> _Node | None:
    """What a JSON node (not started yet) says of itself: a chain's steps, a group's or chord's members."""
    if not isinstance(data, dict) or "task" in data:
        return None
    if isinstance(data.get("chain"), list):
        steps = data["chain"]
        return _Node("chain", len(steps), {f"step:{i}": step for i, step in enumerate(steps)})
    if isinstance(data.get("group"), list):
        members = data["group"]
        return _Node("group", len(members), {f"member:{i}": m for i, m in enumerate(members)})
    chord = data.get("chord")
    if isinstance(chord, dict) and isinstance(chord.get("header"), list):
        header = chord["header"]
        known = {f"member:{i}": m for i, m in enumerate(header)}
        known["callback"] = chord.get("callback")
        return _Node("chord", len(header), known)
    return None


def _task_line(record: TaskRecord, label: str, depth: int) -> str:
    state = record.status.value + (f" ({record.reason})" if record.reason else "")
    if record.status.terminal and record.status is not TaskStatus.SUCCESS and record.error_message:
        error = f"{record.error_type}: " if record.error_type else ""
        error += " ".join(record.error_message.split())
        state += "  " + (error if len(error) <= _ERROR_WIDTH else error[: _ERROR_WIDTH - 1] + "…")
    return _line(depth, label, record.name, record.id, state)


def _line(depth: int, label: str, what: str, node_id: str, state: str) -> str:
    return f"{'  ' * depth}{label + '  ' if label else ''}{what}  {node_id}  {state}".rstrip()
