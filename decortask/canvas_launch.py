"""Launching a workflow's parts and settling what follows them, nested to any depth (`canvas.py` builds
them, `workflow.py` calls this on the workers).

A workflow is a tree of nodes, each JSON: a signature (`{"task": ...}`, `Signature.to_dict`), a chain
(`{"chain": [node, ...]}`), a group (`{"group": [node, ...]}`) or a chord (`{"chord": {"header": [node,
...], "callback": node, "pass_failures": bool}}`). Every node has an id: the workflow's for the root, and
`derived_id(parent, place)` for the others (`step:2` of a chain, `member:0` of a group or a chord's header,
`callback` of a chord), so every task a workflow creates has an id known in advance and is created once.

`launch` starts a node: it sends the tasks that run first, each carrying in its message's `workflow` the
*frame* that says what follows it: a chain frame (`{"chain": {"id", "step", "size", "rest", "then",
"root"}}`: the chain's steps still to run) or a join frame (`{"chord": {"id", "member", "size",
"callback", "pass_failures", "finals", "then", "root"}}`: a member of a group or of a chord's header).
`then` is the frame of the enclosing node, what follows once this node has ended; a node's last task carries
its enclosing frame itself. `settle` runs a frame once its task (or its nested node) has ended: it launches
the chain's next step, or counts the member in the join (an atomic counter in the store) and, once every
member has ended, launches the callback with their results, or settles the enclosing frame with them.

A failure (a task that ended FAILED, CANCELLED or INTERRUPTED) fails the enclosing workflow: the tasks
that would have ended it are written FAILED (reason `workflow_failed`) naming the failing step or member,
and the enclosing frame is settled with that failure, and so on outwards. Frames written before nesting
existed (no `then`, no `root`, signatures only) read the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .continuations import describe, outcome_value
from .errors import ConfigurationError
from .producer import Lineage
from .states import TaskStatus
from .store.base import TaskRecord

#: The namespace of derived ids: a workflow's continuations are uuid5(its id + their place) in it.
_ID_NAMESPACE = uuid.UUID("5d1f3c52-8f4e-4a7e-9c0b-3a1d2e6f7b90")
#: `launch`'s `value` when the node gets no previous result (the first node of a workflow).
NO_VALUE: Any = object()

Node = dict[str, Any]
Frame = dict[str, Any]


def derived_id(workflow_id: str, place: str) -> str:
    """The id of the node at `place` (`step:2`, `member:0`, `callback`) of the node `workflow_id`."""
    return uuid.uuid5(_ID_NAMESPACE, f"{workflow_id}:{place}").hex


def kind_of(node: Any) -> str:
    """`task`, `chain`, `group` or `chord`; `ConfigurationError` for anything else (a forged message)."""
    if isinstance(node, dict):
        if isinstance(node.get("task"), str):
            return "task"
        if isinstance(node.get("chain"), list) and node["chain"]:
            return "chain"
        if isinstance(node.get("group"), list):
            return "group"
        chord = node.get("chord")
        if isinstance(chord, dict) and isinstance(chord.get("header"), list) and "callback" in chord:
            return "chord"
    raise ConfigurationError(f"a workflow node must be a signature, chain, group or chord, got {node!r}")


def shape(node: Node) -> Any:
    """Where a node's result is, relative to its id: None (the task of that id), `[place, shape]` (in the
    node at `place`: a chain's last step, a chord's callback) or `{"members": [shape, ...]}` (a group:
    the list of its members' results)."""
    kind = kind_of(node)
    if kind == "chain":
        steps = node["chain"]
        return [f"step:{len(steps) - 1}", shape(steps[-1])]
    if kind == "chord":
        return ["callback", shape(node["chord"]["callback"])]
    if kind == "group":
        return {"members": [shape(member) for member in node["group"]]}
    return None


def resolve(where: Any, node_id: str) -> Any:
    """The task id(s) holding the result of the node `node_id` of shape `where`: an id, or a list of them
    (nested as the groups are)."""
    if isinstance(where, list):
        return resolve(where[1], derived_id(node_id, str(where[0])))
    if isinstance(where, dict):
        return [resolve(s, derived_id(node_id, f"member:{i}")) for i, s in enumerate(where["members"])]
    return node_id


def flatten(ids: Any) -> list[str]:
    """The task ids of a `resolve` answer, in order."""
    return [one for item in ids for one in flatten(item)] if isinstance(ids, list) else [ids]


def names_and_ids(node: Node, node_id: str) -> list[tuple[str, str]]:
    """(task name, id) of every task the node may create, in order (a chain's steps, a group's members, a
    chord's header then its callback)."""
    kind = kind_of(node)
    if kind == "task":
        return [(node["task"], node_id)]
    if kind == "chord":
        parts = [
            *_children(node["chord"]["header"], node_id, "member"),
            (node["chord"]["callback"], "callback"),
        ]
    else:
        parts = _children(node[kind], node_id, "step" if kind == "chain" else "member")
    return [pair for child, place in parts for pair in names_and_ids(child, derived_id(node_id, place))]


def _children(nodes: Sequence[Node], node_id: str, place: str) -> list[tuple[Node, str]]:
    return [(child, f"{place}:{index}") for index, child in enumerate(nodes)]


@dataclass(frozen=True)
class Outcome:
    """How a node ended: `ok` with its `value`, or not, `why` (naming the failing step or member).

    Attributes:
        last: the id of the task that ended the node (the parent of what follows).
        cause: the record of the task that failed (None when it succeeded).
    """

    ok: bool
    value: Any
    last: str | None
    cause: TaskRecord | None = None
    why: str = ""


def outcome_of(record: TaskRecord) -> Outcome:
    """The outcome of a task from its terminal record."""
    if record.status is TaskStatus.SUCCESS:
        return Outcome(True, record.result, record.id)
    return Outcome(False, None, record.id, record, describe(record))


class Sender(Protocol):
    """What launching and settling do to the broker and the store: the client's (`canvas`) sends at once,
    a worker's (`workflow`) creates each task once and writes patiently."""

    def send(self, leaf: Node, value: Any, lineage: Lineage) -> None:
        """Create and publish the signature `leaf` (with `value` first unless NO_VALUE) as `lineage` says."""

    def fail(self, leaf: Node, why: str, cause: TaskRecord | None, lineage: Lineage) -> None:
        """Write the record of `leaf`'s task FAILED with `why` (and `lineage`), unless it exists."""

    def join(self, join_id: str, member: int) -> int:
        """Count member `member` of join `join_id` as ended; how many have (`WorkflowStore.join_member`)."""

    def records(self, task_ids: list[str]) -> list[TaskRecord | None]:
        """The records of `task_ids`, in order."""


def chain_frame(
    chain_id: str, step: int, size: int, rest: Sequence[Node], then: Frame | None, root: str
) -> Frame | None:
    """The frame of step `step` (of `size`) of chain `chain_id`: the steps after it (`rest`), then what
    follows the chain; the last step carries `then` itself."""
    if not rest:
        return then
    frame: dict[str, Any] = {"id": chain_id, "step": step, "size": size, "rest": list(rest)}
    return {"chain": _outer(frame, then, root, chain_id)}


def join_frame(
    join_id: str,
    member: int,
    members: Sequence[Node],
    then: Frame | None,
    root: str,
    chord: dict[str, Any] | None = None,
) -> Frame | None:
    """The frame of member `member` of the group or chord header `join_id` (`chord`: the chord's fields).

    A group nothing follows (a workflow's outermost) keeps no join: its members carry no frame.
    """
    if chord is None and then is None:
        return None
    callback = chord["callback"] if chord is not None else None
    frame: dict[str, Any] = {"id": join_id, "member": member, "size": len(members)}
    if callback is not None:
        frame["callback"] = callback
        frame["pass_failures"] = bool(chord and chord.get("pass_failures"))
    finals = {str(i): shape(node) for i, node in enumerate(members) if kind_of(node) != "task"}
    if finals:  # where a nested member's result is; plain signatures are at derived_id(join, member:i)
        frame["finals"] = finals
    return {"chord": _outer(frame, then, root, join_id)}


def _outer(frame: dict[str, Any], then: Frame | None, root: str, own_id: str) -> dict[str, Any]:
    if then is not None:
        frame["then"] = then
    if root != own_id:
        frame["root"] = root
    return frame


def launch(
    sender: Sender,
    node: Node,
    node_id: str,
    then: Frame | None,
    root: str,
    value: Any = NO_VALUE,
    parent_id: str | None = None,
) -> None:
    """Start `node` (id `node_id`) of workflow `root`: send the tasks that run first, `value` (the previous
    node's result) first in their arguments; `then` is what follows the node once it has ended."""
    kind = kind_of(node)
    if kind == "task":
        sender.send(node, value, Lineage(node_id, parent_id, root, then))
    elif kind == "chain":
        steps = node["chain"]
        first = chain_frame(node_id, 0, len(steps), steps[1:], then, root)
        launch(sender, steps[0], derived_id(node_id, "step:0"), first, root, value, parent_id)
    else:
        chord = node["chord"] if kind == "chord" else None
        members = chord["header"] if chord else node["group"]
        if not members:  # nothing to wait for: what follows gets an empty list now
            _joined(sender, node_id, chord, then, root, [], parent_id)
            return
        for index, member in enumerate(members):
            frame = join_frame(node_id, index, members, then, root, chord)
            launch(sender, member, derived_id(node_id, f"member:{index}"), frame, root, value, parent_id)


def settle(sender: Sender, spec: Any, outcome: Outcome) -> None:
    """Run what follows a task or a node that ended with `outcome`, as its frame `spec` says."""
    if not isinstance(spec, dict):
        return
    if isinstance(spec.get("chain"), dict):
        _settle_chain(sender, spec["chain"], outcome)
    if isinstance(spec.get("chord"), dict):
        _settle_join(sender, spec["chord"], outcome)


def _settle_chain(sender: Sender, frame: dict[str, Any], outcome: Outcome) -> None:
    chain_id, step, size = str(frame["id"]), int(frame["step"]), int(frame["size"])
    rest, then, root = list(frame["rest"]), frame.get("then"), str(frame.get("root") or chain_id)
    if not rest:
        settle(sender, then, outcome)
        return
    if not outcome.ok:
        why = f"chain {chain_id}: step {step + 1} of {size}, {outcome.why}; the steps after it did not run"
        fail(sender, rest[-1], derived_id(chain_id, f"step:{size - 1}"), then, root, why, outcome.cause)
        return
    nxt = chain_frame(chain_id, step + 1, size, rest[1:], then, root)
    launch(sender, rest[0], derived_id(chain_id, f"step:{step + 1}"), nxt, root, outcome.value, outcome.last)


def _settle_join(sender: Sender, frame: dict[str, Any], outcome: Outcome) -> None:
    join_id, member, size = str(frame["id"]), int(frame["member"]), int(frame["size"])
    callback, pass_failures = frame.get("callback"), bool(frame.get("pass_failures"))
    then, root = frame.get("then"), str(frame.get("root") or join_id)
    if not outcome.ok and not pass_failures:
        kind = "chord" if callback is not None else "group"
        why = f"{kind} {join_id}: member {member + 1} of {size}, {outcome.why}"
        if callback is None:
            settle(sender, then, Outcome(False, None, outcome.last, outcome.cause, why))
        else:
            why += "; the callback did not run"
            fail(sender, callback, derived_id(join_id, "callback"), then, root, why, outcome.cause)
        return
    if sender.join(join_id, member) < size:
        return
    finals = frame.get("finals") or {}
    ids = [resolve(finals.get(str(i)), derived_id(join_id, f"member:{i}")) for i in range(size)]
    flat = flatten(ids)
    found = dict(zip(flat, sender.records(flat), strict=True))
    values = _values(ids, found, pass_failures)
    chord = {"callback": callback} if callback is not None else None
    _joined(sender, join_id, chord, then, root, values, outcome.last)


def _joined(
    sender: Sender,
    join_id: str,
    chord: dict[str, Any] | None,
    then: Frame | None,
    root: str,
    values: list[Any],
    last: str | None,
) -> None:
    """Every member of group or chord `join_id` has ended (`last` ended last): launch the callback with
    `values`, or settle what follows the group with them."""
    if chord is not None:
        launch(sender, chord["callback"], derived_id(join_id, "callback"), then, root, values, last)
    else:
        settle(sender, then, Outcome(True, values, last))


def _values(ids: Any, found: dict[str, TaskRecord | None], pass_failures: bool) -> Any:
    if isinstance(ids, list):
        return [_values(one, found, pass_failures) for one in ids]
    return outcome_value(found.get(ids), ids, pass_failures)


def fail(
    sender: Sender,
    node: Node,
    node_id: str,
    then: Frame | None,
    root: str,
    why: str,
    cause: TaskRecord | None,
) -> None:
    """Fail `node` without running it: write its final tasks FAILED with `why`, then settle `then` with
    that failure (again after a crash: what exists is kept, what follows is settled anyway)."""
    parent = cause.id if cause is not None else None
    for task, task_id, frame in _final_tasks(node, node_id, then, root):
        sender.fail(task, why, cause, Lineage(task_id, parent, root, frame))
    settle(sender, then, Outcome(False, None, cause.id if cause else None, cause, why))


def _final_tasks(
    node: Node, node_id: str, then: Frame | None, root: str
) -> Iterator[tuple[Node, str, Frame | None]]:
    """The tasks whose ends are `node`'s end (its id `node_id`, settling `then`), each with its task id and
    the frame its end settles: a chain's last step, a chord's callback, a group's members."""
    kind = kind_of(node)
    if kind == "task":
        yield node, node_id, then
    elif kind == "chain":
        steps = node["chain"]
        yield from _final_tasks(steps[-1], derived_id(node_id, f"step:{len(steps) - 1}"), then, root)
    elif kind == "chord":
        yield from _final_tasks(node["chord"]["callback"], derived_id(node_id, "callback"), then, root)
    else:
        members = node["group"]
        for index, member in enumerate(members):
            frame = join_frame(node_id, index, members, then, root)
            yield from _final_tasks(member, derived_id(node_id, f"member:{index}"), frame, root)
