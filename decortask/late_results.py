"""Late results: children a running task starts in the background, merged while it runs or after it ended.

- `ctx.spawn(sig, on_late=followup.s())` sends a child task that carries the parent's id (and root id). Its
  id is derived from the parent's id and the spawn's rank (`spawn:0`, `spawn:1`, ...), so an attempt run
  again (a retry, a requeue after a crash) that spawns again finds its children instead of starting them
  twice.
- When a child ends, its worker posts it to the parent's mailbox in the store (`store/spawn_state.py`),
  before acking the child's message (`workflow.continue_workflow`, like a chain's next step).
- Hot merge: while the parent runs, `ctx.results(timeout=)` yields each posted child once, as it arrives
  (each one taken moves the mailbox's cursor, in the store).
- Wake-up merge: when the parent's record is terminal, the mailbox is closed (by the parent's worker right
  after the attempt, else by the sweep in every worker's reaper loop). A child the parent had not taken,
  and a child that ends after the close (its own worker delivers it), is a late result: its `on_late`
  signature is sent once with the child's `ChildResult.to_dict()` first. If the parent did not succeed,
  every child is late: what it merged went nowhere.
- Exactly once: the close and each post are atomic in the store, so each child is made late by one side.
  A late child stays listed in the store until its follow-up was sent (`spawn_delivered`); a worker
  killed before that leaves it to the sweep (or the message's redelivery), and the follow-up's id,
  derived from the child's (`late`), makes a second sending a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .canvas import Signature, derived_id
from .continuations import Write, create
from .errors import ConfigurationError, DecortaskError, StoreError
from .producer import Lineage
from .security import mask_text
from .states import TaskStatus
from .store.base import TaskRecord
from .store.spawn_state import SpawnStore

if TYPE_CHECKING:
    from .app import Decortask
    from .context import TaskContext
    from .handle import TaskHandle

logger = logging.getLogger("decortask.worker")
#: Most seconds between two reads of the mailbox while `ctx.results()` waits.
_POLL_MAX = 0.2
#: Open mailboxes one sweep looks at.
SWEEP_BATCH = 200

#: The app of each attempt running in this process (by task id), and the tasks that spawned during it.
_apps: dict[str, Decortask] = {}
_spawned: set[str] = set()
_lock = threading.Lock()
#: Where the next sweep starts in the list of unsettled mailboxes.
_sweep_from = 0


@dataclass(frozen=True)
class ChildResult:
    """A spawned child's outcome, as `ctx.results()` yields it and an `on_late` follow-up receives it
    (as `to_dict()`; rebuild it with `ChildResult.from_dict`).

    Attributes:
        task_id: the child's id.
        name: the child's task name.
        parent_id: the id of the task that spawned it.
        status: its terminal status (SUCCESS, FAILED, CANCELLED, INTERRUPTED).
        result: its return value when it succeeded.
        error_type: the exception's type, when it did not.
        error_message: the exception's message, when it did not.
    """

    task_id: str
    name: str
    parent_id: str
    status: TaskStatus
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the child succeeded."""
        return self.status is TaskStatus.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the first argument of an `on_late` follow-up."""
        return {
            "task_id": self.task_id,
            "name": self.name,
            "parent_id": self.parent_id,
            "status": self.status.value,
            "result": self.result,
            "error_type": self.error_type,
            "error_message": self.error_message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChildResult:
        """The `ChildResult` that `to_dict` wrote."""
        return cls(
            str(data["task_id"]),
            str(data["name"]),
            str(data["parent_id"]),
            TaskStatus(data["status"]),
            data.get("result"),
            data.get("error_type"),
            data.get("error_message"),
        )

    @classmethod
    def of(cls, record: TaskRecord, parent_id: str) -> ChildResult:
        ok = record.status is TaskStatus.SUCCESS
        message = record.error_message or (record.reason if not ok else None)
        return cls(
            record.id, record.name, parent_id, record.status, record.result if ok else None,
            record.error_type, message,
        )  # fmt: skip


@dataclass
class Children:
    """One attempt's children (kept on its `TaskContext`): what it spawned and how far it has read."""

    app: Decortask
    parent_id: str
    root_id: str
    spawned: list[str] = field(default_factory=list)
    position: int = 0  # the mailbox's next position this attempt reads
    seen: set[str] = field(default_factory=set)

    def outstanding(self) -> int:
        """Children this attempt spawned whose result it has not received yet."""
        return len(set(self.spawned) - self.seen)

    def take_one(self) -> tuple[bool, ChildResult | None]:
        """Take the next child from the mailbox: (whether one was there, its result, None if its record
        is gone)."""
        got = _spawn_store(self.app).spawn_take(self.parent_id, self.position, 1)
        if not got:
            return False, None
        self.position += 1
        self.seen.add(got[0])
        record = self.app.store.get(got[0])
        return True, None if record is None else ChildResult.of(record, self.parent_id)


# -- the worker side: one attempt, and what closes its mailbox ----------------------------------------------


@contextlib.contextmanager
def attempt(app: Decortask, task_id: str, write: Write) -> Iterator[None]:
    """Around one delivery of task `task_id` (`delivery.process_delivery`): lets its code spawn through
    `app`, and once it ran, closes its mailbox if it spawned and its record is terminal."""
    with _lock:
        mine = task_id not in _apps
        if mine:
            _apps[task_id] = app
    try:
        yield
    finally:
        with _lock:
            if mine:
                _apps.pop(task_id, None)
                spawned = task_id in _spawned
                _spawned.discard(task_id)
            else:
                spawned = False
    if spawned:
        try:
            close_if_ended(app, task_id, write)
        except Exception as exc:  # never fail the delivery: the sweep closes it later, nothing is lost
            logger.warning(
                "task %s: could not close its children's mailbox (%s); the sweep will",
                task_id, mask_text(str(exc)),
            )  # fmt: skip


def close_if_ended(app: Decortask, parent_id: str, write: Write) -> bool:
    """Close the mailbox of `parent_id` if its record is terminal (or gone) and deliver its late results
    not yet delivered; whether it closed. Idempotent: a second closer (the sweep) delivers nothing twice."""
    store = _spawn_store(app)
    parent = _record(app, parent_id, write)
    if parent is not None and not parent.status.terminal:
        return False
    succeeded = parent is not None and parent.status is TaskStatus.SUCCESS
    late = cast("list[str]", write(lambda: store.spawn_close(parent_id, succeeded)))
    for child_id in late:
        child = _record(app, child_id, write)
        if child is None:
            logger.warning(
                "task %s: the record of its late child %s is gone; nothing to deliver", parent_id, child_id
            )
        else:
            deliver_late(app, child, (child.workflow or {}).get("spawn") or {}, write)
        _delivered(store, parent_id, child_id, write)
    return True


def child_ended(app: Decortask, record: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    """Post the ended child `record` to its parent's mailbox, or deliver it late if the mailbox is closed.

    Called by `workflow.continue_workflow` for every delivery of a spawned child whose record is terminal,
    before its message is acked. A worker killed before `spawn_delivered` leaves the child listed as late
    and undelivered: the message's redelivery, or the sweep, delivers it; its derived id makes it once.
    """
    parent_id = str(spec["parent"])
    store = _spawn_store(app)
    if not write(lambda: store.spawn_post(parent_id, record.id)):
        deliver_late(app, record, spec, write)
        _delivered(store, parent_id, record.id, write)


def deliver_late(app: Decortask, child: TaskRecord, spec: dict[str, Any], write: Write) -> None:
    """Send the child's `on_late` follow-up with its `ChildResult`, once (its id is derived from the child's)."""
    parent_id = str(spec.get("parent") or child.parent_id)
    if not spec.get("on_late"):
        logger.info(
            "task %s (%s), spawned by %s, ended after its parent; no on_late follow-up was named, so its result "
            "stays in its record",
            child.id, child.name, parent_id,
        )  # fmt: skip
        return
    late = ChildResult.of(child, parent_id).to_dict()
    sig = Signature.from_dict(spec["on_late"]).with_parent_result(late)
    lineage = Lineage(derived_id(child.id, "late"), parent_id, child.root_id or parent_id)
    create(app, sig, lineage, write)


def sweep(app: Decortask) -> int:
    """Close the mailboxes of parents that ended but were never closed (their worker died right after the
    outcome) and deliver late results left undelivered (a worker died before delivering them); what every
    worker's reaper loop runs (`sweeps.py`). Returns how many mailboxes it settled."""
    store = app.store
    if not isinstance(store, SpawnStore):
        return 0
    global _sweep_from
    closed = 0
    with _lock:
        start = _sweep_from
    parents = store.spawn_unsettled(SWEEP_BATCH, start)
    for parent_id in parents:
        with _lock:
            if parent_id in _apps:
                continue  # running in this process: its attempt closes it
        if close_if_ended(app, parent_id, lambda step: step()):
            logger.warning(
                "delivered the late results of task %s left behind by a worker that died", parent_id
            )
            closed += 1
    with _lock:  # many parents still running: the next sweep looks at the ones after them
        _sweep_from = 0 if len(parents) < SWEEP_BATCH else start + len(parents) - closed
    return closed


# -- the task side: ctx.spawn() and ctx.results() -----------------------------------------------------------


def spawn(ctx: TaskContext, sig: Signature[Any], on_late: Signature[Any] | None = None) -> TaskHandle[Any]:
    """`ctx.spawn`: send `sig` as a child of the running task; see `TaskContext.spawn`."""
    from .handle import TaskHandle

    if not isinstance(sig, Signature):
        raise ConfigurationError(f"ctx.spawn() takes a signature (task.s(...)), got {sig!r}")
    if on_late is not None and not isinstance(on_late, Signature):
        raise ConfigurationError(f"ctx.spawn(on_late=) takes a signature (task.s(...)), got {on_late!r}")
    children = _children_of(ctx)
    app = children.app
    store = _spawn_store(app)
    if not children.spawned:
        store.spawn_open(children.parent_id)
        with _lock:
            _spawned.add(children.parent_id)
    child_id = derived_id(children.parent_id, f"spawn:{len(children.spawned)}")
    children.spawned.append(child_id)
    routed = _routed(app, sig, ctx.queue)
    follow = _routed(app, on_late, ctx.queue).to_dict() if on_late is not None else None
    spec = {"spawn": {"parent": children.parent_id, "on_late": follow}}
    existing = app.store.get(child_id)
    if existing is None:
        try:
            return routed.send(app, Lineage(child_id, children.parent_id, children.root_id, spec))
        except StoreError:
            existing = app.store.get(child_id)
            if existing is None:
                raise
    # An earlier attempt of this task spawned it already: the same child, not a second one.
    return TaskHandle(app, child_id, existing.name)


def results(ctx: TaskContext, timeout: float | None) -> Iterator[ChildResult]:
    """`ctx.results`: the children's results as they arrive; see `TaskContext.results`."""
    children = ctx._children
    if not isinstance(children, Children):
        return
    wait = _Pauses(timeout)
    while children.outstanding() and not ctx.should_stop():
        took, result = children.take_one()
        if result is not None:
            yield result
        pause = wait.after(took)
        if pause is None:
            return
        ctx._stop.wait(pause)  # a cancel or shutdown wakes it


async def aresults(ctx: TaskContext, timeout: float | None) -> AsyncIterator[ChildResult]:
    """`ctx.aresults`: `results` for an `async def` task (the store is read in a thread)."""
    children = ctx._children
    if not isinstance(children, Children):
        return
    wait = _Pauses(timeout)
    while children.outstanding() and not ctx.should_stop():
        took, result = await asyncio.to_thread(children.take_one)
        if result is not None:
            yield result
        pause = wait.after(took)
        if pause is None:
            return
        await asyncio.sleep(pause)


class _Pauses:
    """How long to wait before reading the mailbox again: growing to `_POLL_MAX`, None past the timeout."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pause = 0.01

    def after(self, took: bool) -> float | None:
        """The pause after a read that `took` a child or not: none after a take (read again at once)."""
        if took:
            self.pause = 0.01
            return 0.0
        return self._next()

    def _next(self) -> float | None:
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        pause = self.pause if left is None else min(self.pause, left)
        self.pause = min(self.pause * 1.5, _POLL_MAX)
        return pause


def _routed(app: Decortask, sig: Signature[Any], parent_queue: str) -> Signature[Any]:
    """`sig` with its queue resolved: its own, its task's, else the parent's queue (where this worker
    consumes; the worker's default queue may be one nobody consumes)."""
    task = app.registry.get(sig.name)  # UnknownTaskError now, in the parent, rather than on delivery
    if sig.options.get("queue") or task.options.queue or not parent_queue:
        return sig.routed(app)
    return sig.set(queue=parent_queue)


def _children_of(ctx: TaskContext) -> Children:
    if isinstance(ctx._children, Children):
        return ctx._children
    with _lock:
        app = _apps.get(ctx.task_id)
    if app is None:
        raise DecortaskError(
            f"ctx.spawn() was called in task {ctx.task_id}, which no worker runs (a direct call of the "
            "function?); spawn from a task run by a worker, run_pending() or eager()"
        )
    parent = app.store.get(ctx.task_id)
    root = (parent.root_id if parent is not None else None) or ctx.task_id
    children = Children(app, ctx.task_id, root)
    ctx._children = children
    return children


def _delivered(store: SpawnStore, parent_id: str, child_id: str, write: Write) -> None:
    write(lambda: store.spawn_delivered(parent_id, child_id))


def _record(app: Decortask, task_id: str, write: Write) -> TaskRecord | None:
    return cast("TaskRecord | None", write(lambda: app.store.get(task_id)))


def _spawn_store(app: Decortask) -> SpawnStore:
    store = app.store
    if not isinstance(store, SpawnStore):
        raise ConfigurationError(
            f"the store {type(store).__name__} keeps no late results; ctx.spawn() needs a SQLite, Redis, "
            "PostgreSQL or memory store"
        )
    return store
