"""The canvas: signatures (one task call written down) and the workflows made of them, `chain`, `group` and
`chord` (Celery's names), with their handles. What runs them on the workers is `workflow.py`.

`add.s(2, 2)` is a signature; in a chain the previous step's result is put before its arguments, unless it
is immutable (`add.si(2, 2)`). A signature is JSON (`to_dict` / `Signature.from_dict`): a workflow's steps
travel inside the message (`workflow`, DESIGN §5) and its record, and a worker finds the task by its
registered name in its own registry, never by importing a name that came from a message.

The handle of a chain or a chord is the handle of the task that ends it (the chain's last step, the chord's
callback), a `WorkflowHandle`, which waits for that task to be created and then for its outcome. Those
tasks' ids are derived from the workflow's id (`derived_id`), so the workers create each of them once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .call_options import CallOptions
from .errors import ConfigurationError, TaskNotFound, WaitTimeout
from .handle import TaskHandle, TaskResult, _value_of
from .producer import NO_LINEAGE, Lineage, send_task
from .states import TaskStatus

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

    def __or__(self, other: Signature[Any] | Chain[Any]) -> Chain[Any]:
        """`a.s() | b.s()`: the chain of both."""
        return chain(self, other)


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


#: The namespace of derived ids: a workflow's continuations are uuid5(its id + their place) in it.
_ID_NAMESPACE = uuid.UUID("5d1f3c52-8f4e-4a7e-9c0b-3a1d2e6f7b90")
#: Most seconds between two reads while a workflow's final task is not created yet.
_POLL_MAX = 0.2


def derived_id(workflow_id: str, place: str) -> str:
    """The id of the task at `place` (`step:2`, `member:0`, `callback`) of workflow `workflow_id`."""
    return uuid.uuid5(_ID_NAMESPACE, f"{workflow_id}:{place}").hex


def _current(app: Decortask | None) -> Decortask:
    from .app import current_app

    return app or current_app()


# -- building ------------------------------------------------------------------------------------------------


class Chain(Generic[R]):
    """Steps run one after another, each result put before the next step's arguments (unless `.si()`)."""

    def __init__(self, steps: Sequence[Signature[Any]]) -> None:
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return " | ".join(step.name for step in self.steps) or "chain()"

    def __or__(self, other: Signature[Any] | Chain[Any]) -> Chain[Any]:
        return chain(self, other)

    def apply_async(self, *, app: Decortask | None = None) -> WorkflowHandle[R]:
        """Enqueue the first step; the handle waits for the last one (and raises naming a failed step)."""
        app = _current(app)
        if not self.steps:
            raise ConfigurationError("chain() has no steps; give it at least one signature")
        steps = [step.routed(app) for step in self.steps]
        workflow_id = uuid.uuid4().hex
        size = len(steps)
        step_ids = [derived_id(workflow_id, f"step:{index}") for index in range(size)]
        steps[0].send(
            app, Lineage(step_ids[0], None, workflow_id, chain_spec(workflow_id, 0, size, steps[1:]))
        )
        return WorkflowHandle(app, step_ids[-1], steps[-1].name, workflow_id, step_ids[:-1])

    def delay(self) -> WorkflowHandle[R]:
        """`apply_async()`."""
        return self.apply_async()


class Group:
    """Signatures run in parallel; the handle's `get()` returns their results in order."""

    def __init__(self, members: Iterable[Signature[Any]]) -> None:
        self.members = tuple(members)

    def __repr__(self) -> str:
        return f"group({', '.join(member.name for member in self.members)})"

    def apply_async(self, *, app: Decortask | None = None) -> GroupHandle:
        """Enqueue every member (an empty group enqueues nothing, and its `get()` is `[]`)."""
        app = _current(app)
        group_id = uuid.uuid4().hex
        handles = [member.send(app, Lineage(root_id=group_id)) for member in self.members]
        return GroupHandle(group_id, handles)

    def delay(self) -> GroupHandle:
        """`apply_async()`."""
        return self.apply_async()


class Chord(Generic[R]):
    """A group whose results, once every member ended, are the first argument of `callback`.

    A member that ends FAILED, CANCELLED or INTERRUPTED fails the chord (its callback's record, naming the
    member) and the callback never runs; with `pass_failures`, the callback runs anyway and gets, in that
    member's place, `{"status", "error_type", "error_message", "task_id"}`.
    """

    def __init__(self, header: Group, callback: Signature[R], pass_failures: bool = False) -> None:
        self.header = header
        self.callback = callback
        self.pass_failures = pass_failures

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.callback.name})"

    def apply_async(self, *, app: Decortask | None = None) -> WorkflowHandle[R]:
        """Enqueue the members; the handle waits for the callback."""
        app = _current(app)
        routed = self.callback.routed(app)
        chord_id = uuid.uuid4().hex
        callback_id = derived_id(chord_id, "callback")
        members = self.header.members
        if not members:  # nothing to wait for: the callback gets an empty list now
            routed.with_parent_result([]).send(app, Lineage(callback_id, None, chord_id))
        callback = routed.to_dict()
        member_ids = [derived_id(chord_id, f"member:{index}") for index in range(len(members))]
        for index, member in enumerate(members):
            spec = {
                "chord": {
                    "id": chord_id,
                    "member": index,
                    "size": len(members),
                    "callback": callback,
                    "pass_failures": self.pass_failures,
                }
            }
            member.send(app, Lineage(member_ids[index], None, chord_id, spec))
        return WorkflowHandle(app, callback_id, self.callback.name, chord_id, member_ids)

    def delay(self) -> WorkflowHandle[R]:
        """`apply_async()`."""
        return self.apply_async()


def chain(*steps: Signature[Any] | Chain[Any]) -> Chain[Any]:
    """`chain(a.s(), b.s(), c.s())`, the same as `a.s() | b.s() | c.s()`; nested chains are flattened."""
    flat: list[Signature[Any]] = []
    for step in steps:
        if isinstance(step, Chain):
            flat.extend(step.steps)
        elif isinstance(step, Signature):
            flat.append(step)
        else:
            raise ConfigurationError(f"chain() takes signatures (task.s(...)) and chains, got {step!r}")
    return Chain(flat)


def group(*members: Signature[Any] | Iterable[Signature[Any]]) -> Group:
    """`group(a.s(1), a.s(2))` or `group(a.s(i) for i in range(10))`."""
    flat: list[Signature[Any]] = []
    for member in members:
        if isinstance(member, Signature):
            flat.append(member)
        else:
            flat.extend(member)
    for member in flat:
        if not isinstance(member, Signature):
            raise ConfigurationError(f"group() takes signatures (task.s(...)), got {member!r}")
    return Group(flat)


def chord(
    header: Group | Iterable[Signature[Any]], callback: Signature[R], *, pass_failures: bool = False
) -> Chord[R]:
    """`chord(group(...), callback.s())`: the callback gets the list of the members' results in order."""
    if not isinstance(callback, Signature):
        raise ConfigurationError(f"chord()'s callback must be a signature (task.s(...)), got {callback!r}")
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


def chain_spec(
    workflow_id: str, step: int, size: int, rest: Sequence[Signature[Any]]
) -> dict[str, Any] | None:
    if not rest:
        return None  # the last step: nothing follows it
    return {"chain": {"id": workflow_id, "step": step, "size": size, "rest": [s.to_dict() for s in rest]}}


# -- handles -------------------------------------------------------------------------------------------------


class WorkflowHandle(TaskHandle[R]):
    """The handle of a chain or a chord: the task that ends it, which the workflow creates later.

    `wait()`/`get()` wait for that task to be created, then for its outcome; a failed step or member
    surfaces as that task's `TaskFailed`, naming the step or member. `cancel()` cancels the workflow's
    tasks that exist and have not ended (a chain's current step, a chord's members), which fails it.
    """

    def __init__(
        self, app: Decortask, task_id: str, name: str, workflow_id: str, parts: Sequence[str] = ()
    ) -> None:
        super().__init__(app, task_id, name)
        self.workflow_id = workflow_id
        #: Ids of the tasks `cancel()` looks at, besides the final one: a chain's steps, a chord's members.
        self.parts = tuple(parts)

    def cancel(self) -> bool:
        """Cancel every task of the workflow that exists and has not ended; True if any was cancelled.

        A cancelled step or member ends CANCELLED, and the workflow fails naming it (a chain's later steps
        and a chord's callback never run). A chain step about to be created as this runs is not seen.
        """
        from .control import request_cancel

        store = self.app.store
        cancelled = False
        for task_id in (*self.parts, self.id):
            record = store.get(task_id)
            if record is not None and not record.status.terminal:
                cancelled = request_cancel(self.app, task_id) or cancelled
        return cancelled

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id}: {self.name} {self.id}>"

    def done(self) -> bool:
        record = self.app.store.get(self.id)
        return record is not None and record.status.terminal

    @property
    def status(self) -> TaskStatus:
        """The final task's status; PENDING while the workflow has not created it yet."""
        record = self.app.store.get(self.id)
        return TaskStatus.PENDING if record is None else record.status

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(
            f"workflow {self.workflow_id}: its final task {self.name} ({self.id}) is not created yet (its "
            "earlier tasks still run; wait() or get() wait for it), or its record expired"
        )

    def wait(self, timeout: float | None = None) -> TaskResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while self.app.store.get(self.id) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(
                    f"workflow {self.workflow_id}: its final task {self.name} ({self.id}) was not created "
                    f"within {timeout} s; its earlier tasks still run, or no worker consumes their queue"
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, _POLL_MAX)
        return super().wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    async def await_result(self, timeout: float | None = None) -> TaskResult:
        import asyncio

        return await asyncio.to_thread(self.wait, timeout)


class GroupHandle:
    """The members' handles of a group, in order."""

    def __init__(self, group_id: str, handles: Sequence[TaskHandle[Any]]) -> None:
        self.id = group_id
        self.handles = list(handles)

    def __repr__(self) -> str:
        return f"<GroupHandle {self.id}: {len(self.handles)} tasks>"

    def __len__(self) -> int:
        return len(self.handles)

    def __iter__(self) -> Iterator[TaskHandle[Any]]:
        return iter(self.handles)

    def __getitem__(self, index: int) -> TaskHandle[Any]:
        return self.handles[index]

    def wait(self, timeout: float | None = None) -> list[TaskResult]:
        """Every member's terminal snapshot, in order; `WaitTimeout` if they have not all ended in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            h.wait(None if deadline is None else max(0.0, deadline - time.monotonic())) for h in self.handles
        ]

    def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; raises the first failed member's `TaskFailed`/`TaskCancelled`."""
        return [_value_of(result) for result in self.wait(timeout)]

    def done(self) -> bool:
        return all(handle.done() for handle in self.handles)

    def cancel(self) -> int:
        """Cancel every member that has not ended (pending ones never run); how many were cancelled."""
        return sum(1 for handle in self.handles if handle.cancel())
