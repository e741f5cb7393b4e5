"""The canvas: signatures (one task call written down) and the workflows made of them, `chain`, `group` and
`chord` (Celery's names), with their handles. What runs them on the workers is `workflow.py`.

`add.s(2, 2)` is a signature; in a chain the previous step's result is put before its arguments, unless it
is immutable (`add.si(2, 2)`). A signature is JSON (`to_dict` / `Signature.from_dict`): a workflow's steps
travel inside the message (`workflow`, DESIGN §5) and its record, and a worker finds the task by its
registered name in its own registry, never by importing a name that came from a message.

Workflows nest: a chain's step, a group's member, a chord's header member or callback may each be a
signature, a chain, a group or a chord. `apply_async` turns the workflow into JSON nodes and starts it
(`canvas_launch.launch`); the workers go on from there (`workflow.py`). Every task's id is derived from the
workflow's id and its place (`derived_id`), so the workers create each of them once.

The handle of a chain or a chord is the handle of the task that ends it (the chain's last step, the chord's
callback), a `WorkflowHandle` (`canvas_handles.py`), which waits for that task to be created and then for
its outcome; a group's, or a chain's that ends in a group, is a `GroupHandle` of its members' handles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import canvas_launch
from .call_options import CallOptions
from .canvas_handles import GroupHandle, WorkflowHandle, handle_for
from .canvas_launch import NO_VALUE, Node, derived_id
from .errors import ConfigurationError
from .handle import TaskHandle
from .producer import NO_LINEAGE, Lineage, send_task
from .store.base import TaskRecord

if TYPE_CHECKING:
    from .app import Decortask

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "GroupHandle",
    "Signature",
    "WorkflowHandle",
    "chain",
    "chord",
    "derived_id",
    "group",
    "signature",
]

R = TypeVar("R")

#: Call options a signature may carry (`.set(...)`): those of `apply_async` that make sense later.
SIGNATURE_OPTIONS = frozenset({"queue", "countdown", "priority", "expires", "tags"})


@dataclass(frozen=True)
class Signature(Generic[R]):
    """A task call to make later: `add.s(2, 2)`, `add.si(2, 2)`, `signature("tasks.add", (2, 2))`.

    Attributes:
        name: the task's registered name.
        args: positional arguments (JSON values); a chain puts the previous result before them.
        kwargs: keyword arguments (JSON values).
        options: call options (`SIGNATURE_OPTIONS`), as `.set(...)` gave them.
        immutable: ignore the previous step's result (`.si()`).
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    immutable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a signature needs a task name (a non-empty string), got {self.name!r}")
        unknown = sorted(set(self.options) - SIGNATURE_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"signature of {self.name}: unknown option(s) {', '.join(unknown)}; "
                f"a signature takes {', '.join(sorted(SIGNATURE_OPTIONS))}"
            )

    def set(self, **options: Any) -> Signature[R]:
        """This signature with these call options added (queue, countdown, priority, expires, tags)."""
        return replace(self, options={**self.options, **options})

    def with_parent_result(self, value: Any) -> Signature[R]:
        """The call a chain makes after a step returned `value`: `value` first, unless immutable."""
        if self.immutable:
            return self
        return replace(self, args=(value, *self.args))

    def routed(self, app: Decortask) -> Signature[R]:
        """This signature with its queue resolved in `app`, as `.delay()` would (its own, its task's, the app's
        default): a workflow's continuation is created on a worker whose default queue may differ. Raises
        `UnknownTaskError` for a task `app` does not know."""
        task = app.registry.get(self.name)
        if self.options.get("queue"):
            return self
        return self.set(queue=task.options.queue or app.settings.default_queue)

    def call_options(self) -> CallOptions:
        """The signature's options as `apply_async` takes them."""
        return CallOptions(**self.options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what a message's `workflow` carries; `from_dict` inverts it."""
        data: dict[str, Any] = {"task": self.name, "args": list(self.args), "kwargs": dict(self.kwargs)}
        if self.options:
            data["options"] = dict(self.options)
        if self.immutable:
            data["immutable"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Signature[Any]:
        """The signature `to_dict` wrote; raises `ConfigurationError` for anything else (e.g. a forged message)."""
        if not isinstance(data, dict):
            raise ConfigurationError(f"a signature must be a JSON object, got {type(data).__name__}")
        args, kwargs, options = data.get("args", []), data.get("kwargs", {}), data.get("options", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(options, dict):
            raise ConfigurationError(f"signature of {data.get('task')!r}: args, kwargs or options malformed")
        return cls(data.get("task"), tuple(args), kwargs, options, bool(data.get("immutable", False)))  # type: ignore[arg-type]

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: Decortask | None = None,
        **options: Any,
    ) -> TaskHandle[R]:
        """Enqueue this call, `args` put before the signature's own, `kwargs` and `options` over its own."""
        from .app import current_app

        app = app or current_app()
        call = replace(self, args=(*(args or ()), *self.args), kwargs={**self.kwargs, **(kwargs or {})})
        handle: TaskHandle[R] = call.set(**options).send(app)
        return handle

    def delay(self, *args: Any, **kwargs: Any) -> TaskHandle[R]:
        """`apply_async(args, kwargs)`."""
        return self.apply_async(args, kwargs)

    def send(self, app: Decortask, lineage: Lineage | None = None) -> TaskHandle[Any]:
        """Validate, record and publish exactly this call through `app` (a workflow passes its `lineage`).

        Raises:
            UnknownTaskError: no task of this name is registered in `app`.
            TypeError: the arguments do not fit the task.
        """
        task = app.registry.get(self.name)
        options = self.call_options()
        handle = send_task(app, task, tuple(self.args), dict(self.kwargs), options, lineage or NO_LINEAGE)
        if app.eager_runner is not None:
            app.eager_runner(handle)
        return handle

    def __or__(self, other: Part) -> Chain[Any]:
        """`a.s() | b.s()`: the chain of both."""
        return chain(self, other)

    def node(self, app: Decortask) -> Node:
        """This signature as a workflow node (`canvas_launch`), its queue resolved in `app`."""
        return self.routed(app).to_dict()


def signature(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    **options: Any,
) -> Signature[Any]:
    """A signature by the task's registered name (Celery's `signature`). Sending it, or a workflow holding it,
    needs the task registered in the sending process, as `.delay()` does: its arguments are checked there."""
    return Signature(name, tuple(args), dict(kwargs or {}), options, immutable)


def _current(app: Decortask | None) -> Decortask:
    from .app import current_app

    return app or current_app()


class _ClientSender:
    """How `apply_async` starts a workflow (`canvas_launch.Sender`): each first task is sent at once, as
    `.delay()` would (its id is new: nothing to check first)."""

    def __init__(self, app: Decortask) -> None:
        self.app = app

    def send(self, leaf: Node, value: Any, lineage: Lineage) -> None:
        sig = Signature.from_dict(leaf)
        (sig if value is NO_VALUE else sig.with_parent_result(value)).send(self.app, lineage)

    def fail(self, leaf: Node, why: str, cause: TaskRecord | None, lineage: Lineage) -> None:
        raise ConfigurationError(why)  # nothing fails before a task has run

    def join(self, join_id: str, member: int) -> int:
        from .store.workflow_state import WorkflowStore

        store = self.app.store
        if not isinstance(store, WorkflowStore):
            raise ConfigurationError(f"the store {type(store).__name__} keeps no workflow joins")
        return store.join_member(join_id, member)

    def records(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return [self.app.store.get(task_id) for task_id in task_ids]


def _start(app: Decortask | None, part: Part) -> Any:
    """Send the first tasks of workflow `part` (a new id) and return its handle (`handle_for`)."""
    app = _current(app)
    node = part.node(app)
    root = uuid.uuid4().hex
    canvas_launch.launch(_ClientSender(app), node, root, None, root)
    return handle_for(app, node, root, root)


# -- building ------------------------------------------------------------------------------------------------


class _Sent(Generic[R]):
    """A chain's or a chord's ways to send it: `delay()` and calling it are both `apply_async()`."""

    def apply_async(self, *, app: Decortask | None = None) -> WorkflowHandle[R]:
        raise NotImplementedError  # each workflow says what its handle waits for

    def delay(self) -> WorkflowHandle[R]:
        """`apply_async()`."""
        return self.apply_async()

    def __call__(self) -> WorkflowHandle[R]:
        """`apply_async()`: calling a workflow sends it, as Celery's `chain(...)()` does."""
        return self.apply_async()


class Chain(_Sent[R]):
    """Steps run one after another, each result put before the next step's arguments (unless `.si()`);
    a step may be a signature, a group (the next step gets the list of its results) or a chord."""

    def __init__(self, steps: Sequence[Part]) -> None:
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return (
            " | ".join(repr(step) if not isinstance(step, Signature) else step.name for step in self.steps)
            or "chain()"
        )

    def __or__(self, other: Part) -> Chain[Any]:
        return chain(self, other)

    def node(self, app: Decortask) -> Node:
        """This chain as a workflow node, its signatures' queues resolved in `app`."""
        if not self.steps:
            raise ConfigurationError("chain() has no steps; give it at least one signature")
        return {"chain": [step.node(app) for step in self.steps]}

    def apply_async(self, *, app: Decortask | None = None) -> WorkflowHandle[R]:
        """Enqueue the first step; the handle waits for the last one (and raises naming a failed step).
        A chain that ends in a group returns a `GroupHandle` of the group's members."""
        handle: WorkflowHandle[R] = _start(app, self)
        return handle


class Group:
    """Parts run in parallel; the handle's `get()` returns their results in order."""

    def __init__(self, members: Iterable[Part]) -> None:
        self.members = tuple(members)

    def __repr__(self) -> str:
        return f"group({', '.join(m.name if isinstance(m, Signature) else repr(m) for m in self.members)})"

    def __or__(self, other: Part) -> Chord[Any] | Chain[Any]:
        """`group(...) | cb.s()` is `chord(group(...), cb.s())`, as in Celery (the same for a chain)."""
        if isinstance(other, Signature | Chain):
            return Chord(self, other)
        return chain(self, other)

    def node(self, app: Decortask) -> Node:
        """This group as a workflow node."""
        return {"group": [member.node(app) for member in self.members]}

    def apply_async(self, *, app: Decortask | None = None) -> GroupHandle:
        """Enqueue every member (an empty group enqueues nothing, and its `get()` is `[]`)."""
        handle: GroupHandle = _start(app, self)
        return handle

    def delay(self) -> GroupHandle:
        """`apply_async()`."""
        return self.apply_async()

    def __call__(self) -> GroupHandle:
        """`apply_async()`: calling a workflow sends it, as Celery's `chain(...)()` does."""
        return self.apply_async()


class Chord(_Sent[R]):
    """A group whose results, once every member ended, are the first argument of `callback` (a signature
    or a chain).

    A member that ends FAILED, CANCELLED or INTERRUPTED fails the chord (its callback's record, naming the
    member) and the callback never runs; with `pass_failures`, the callback runs anyway and gets, in that
    member's place, `{"status", "error_type", "error_message", "task_id"}`.
    """

    def __init__(self, header: Group, callback: Signature[R] | Chain[R], pass_failures: bool = False) -> None:
        self.header = header
        self.callback = callback
        self.pass_failures = pass_failures

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.callback!r})"

    def __or__(self, other: Part) -> Chain[Any]:
        return chain(self, other)

    def node(self, app: Decortask) -> Node:
        """This chord as a workflow node."""
        header = [member.node(app) for member in self.header.members]
        chord = {"header": header, "callback": self.callback.node(app), "pass_failures": self.pass_failures}
        return {"chord": chord}

    def apply_async(self, *, app: Decortask | None = None) -> WorkflowHandle[R]:
        """Enqueue the members; the handle waits for the callback."""
        handle: WorkflowHandle[R] = _start(app, self)
        return handle


#: What a workflow is made of: a signature, a chain, a group or a chord.
Part = Signature[Any] | Chain[Any] | Group | Chord[Any]
_PARTS = (Signature, Chain, Group, Chord)


def chain(*steps: Part) -> Chain[Any]:
    """`chain(a.s(), b.s(), c.s())`, the same as `a.s() | b.s() | c.s()`; nested chains are flattened.
    A step may be a group or a chord: `chain(a.s(), group(b.s(), c.s()), d.s())` gives `d` the list."""
    flat: list[Part] = []
    for step in steps:
        if isinstance(step, Chain):
            flat.extend(step.steps)
        elif isinstance(step, _PARTS):
            flat.append(step)
        else:
            raise ConfigurationError(
                f"chain() takes signatures (task.s(...)), chains, groups and chords, got {step!r}"
            )
    return Chain(flat)


def group(*members: Part | Iterable[Part]) -> Group:
    """`group(a.s(1), a.s(2))` or `group(a.s(i) for i in range(10))`; a member may be a chain, a group or
    a chord."""
    flat: list[Any] = []
    for member in members:
        if isinstance(member, _PARTS):
            flat.append(member)
        else:
            flat.extend(member)
    for member in flat:
        if not isinstance(member, _PARTS):
            raise ConfigurationError(
                f"group() takes signatures (task.s(...)), chains, groups and chords, got {member!r}"
            )
    return Group(flat)


def chord(
    header: Group | Iterable[Part], callback: Signature[R] | Chain[R], *, pass_failures: bool = False
) -> Chord[R]:
    """`chord(group(...), callback.s())`: the callback (a signature or a chain) gets the list of the
    members' results in order."""
    if not isinstance(callback, Signature | Chain):
        raise ConfigurationError(
            f"chord()'s callback must be a signature (task.s(...)) or a chain, got {callback!r}"
        )
    return Chord(header if isinstance(header, Group) else group(header), callback, pass_failures)


def signatures(
    keyword: str, given: Signature[Any] | Sequence[Signature[Any]] | None
) -> tuple[Signature[Any], ...]:
    """`link=` / `link_error=` as a tuple of signatures; `ConfigurationError` for anything else."""
    sigs = (given,) if isinstance(given, Signature) else tuple(given or ())
    for sig in sigs:
        if not isinstance(sig, Signature):
            raise ConfigurationError(f"{keyword}= takes signatures (task.s(...)), got {sig!r}")
    return sigs
