"""The state store protocol, the task record, and what every backend shares.

A store keeps one `TaskRecord` per task and the schedule of delayed work (countdown, eta, retry delays).
Every backend passes `tests/test_store_contract.py`. Timestamps are UNIX seconds (float, UTC).

A transition is data, a `TransitionStep`; `Transitions.transition` (the keyword form every caller uses)
is written once here and hands its step to the one method each backend implements, `apply_step`. The
backends (`memory.py`, `sqlite.py`, `redis.py`) and the group-commit writer (`writer.py`) subclass the
protocols explicitly to inherit it, and depend on nothing in this package but this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..states import CLAIMABLE, HOLDS_IDEMPOTENCY_KEY, TaskStatus, check_transition

#: The default `TaskStore.wait_for_outcome` reads the record after this pause, growing by half up to POLL_MAX.
POLL_FIRST = 0.005
POLL_MAX = 0.2

#: Fields a caller may set through `TaskStore.transition(..., **changes)`.
MUTABLE_FIELDS = frozenset(
    {
        "reason",
        "attempt",
        "result",
        "error_type",
        "error_message",
        "traceback",
        "owner",
        "started_at",
        "finished_at",
        "scheduled_for",
        "expires_at",
        "progress",
        "progress_message",
        "output",
        "deliveries",
        "cancel_requested_at",
    }
)


@dataclass(frozen=True)
class LogLine:
    """One `task_log()` line, stored with its task."""

    ts: float
    message: str
    attempt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "message": self.message, "attempt": self.attempt, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogLine:
        return cls(
            ts=float(data["ts"]),
            message=str(data["message"]),
            attempt=int(data.get("attempt", 0)),
            extra=dict(data.get("extra") or {}),
        )


@dataclass
class TaskRecord:
    """Everything the store knows about one task.

    `attempt` counts attempts started so far: 0 while PENDING, 1 during and after the first run.
    `deliveries` counts the times the current attempt's message was taken up to run without settling
    (a worker died with it); `max_deliveries` caps it so a task that kills its worker cannot loop.
    `result`, `args` and `kwargs` are JSON values; errors are kept as strings only (never re-imported).
    """

    id: str
    name: str
    queue: str
    status: TaskStatus
    created_at: float
    updated_at: float
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    attempt: int = 0
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    logs: list[LogLine] = field(default_factory=list)
    progress: float | None = None
    progress_message: str | None = None
    #: What the running task last published with `ctx.set_output({...})` (JSON), apart from its result.
    output: Any = None
    tags: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    owner: str | None = None
    priority: int = 0
    persist: bool = True
    scheduled_for: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    deliveries: int = 0
    cancel_requested_at: float | None = None
    #: The message's `workflow` (what follows this task, `workflow.py`), kept so that a message rebuilt
    #: from the record (a requeued attempt, a retry) still continues its workflow.
    workflow: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `from_dict` inverts it exactly.

        Shallow, to be serialized at once: args, kwargs, tags and result are the record's own objects, not
        copies (`dataclasses.asdict` deep-copied them, which cost more than the JSON encoding itself).
        """
        data = dict(self.__dict__)  # exactly the fields: a plain dataclass keeps nothing else there
        data["status"] = self.status.value
        data["logs"] = [line.to_dict() for line in self.logs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        # Keys this version does not know (written by a newer one) are left out.
        values = {name: value for name, value in data.items() if name in _RECORD_FIELD_SET}
        values["status"] = TaskStatus(values["status"])
        values["logs"] = [LogLine.from_dict(line) for line in values.get("logs") or []]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskRecord:
        return cls.from_dict(json.loads(text))

    @property
    def holds_idempotency_key(self) -> bool:
        return self.status in HOLDS_IDEMPOTENCY_KEY

    def detached(self) -> TaskRecord:
        """A copy whose args, kwargs, tags and logs lists can be changed without touching this record."""
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        copied.args = list(self.args)
        copied.kwargs = dict(self.kwargs)
        copied.tags = dict(self.tags)
        copied.logs = list(self.logs)
        return copied


_RECORD_FIELD_SET = frozenset(f.name for f in dataclasses.fields(TaskRecord))


@dataclass(frozen=True)
class ScheduleEntry:
    """Delayed work: a ready-to-publish message body that becomes due at `due_at`.

    `id` is unique per (task, attempt) so re-scheduling the same attempt twice keeps one entry.
    """

    id: str
    task_id: str
    queue: str
    due_at: float
    body: str
    priority: int = 0

    @classmethod
    def for_attempt(
        cls,
        task_id: str,
        attempt: int | str,
        *,
        queue: str,
        due_at: float,
        body: bytes | str,
        priority: int = 0,
    ) -> ScheduleEntry:
        """The entry that publishes `body` (the message of attempt `attempt`) to `queue` at `due_at`.

        The one constructor of entries for tasks (`records.schedule_entry` builds one from a message): its
        id is `task_id:attempt`, so writing the same attempt twice keeps one entry.

        Args:
            attempt: the attempt number, or a slot name for an entry that is not an attempt of its own
                (`recheck`: a parked duplicate delivery).
            body: the encoded message (bytes as a broker carries them, or their text).
        """
        return cls(
            id=f"{task_id}:{attempt}",
            task_id=task_id,
            queue=queue,
            due_at=due_at,
            body=body.decode() if isinstance(body, bytes) else body,
            priority=priority,
        )


#: Seconds a worker's heartbeat and clean-stop stamps are kept (every store): a worker silent for a day
#: counts as dead either way.
HEARTBEAT_TTL = 24 * 3600

#: What a task list can be ordered by (`TaskQuery.order`): the key, or "-key" for descending.
ORDER_FIELDS = {"created": "created_at", "name": "name", "status": "status", "queue": "queue"}
TASK_ORDERS = frozenset({*ORDER_FIELDS, *(f"-{key}" for key in ORDER_FIELDS)})


@dataclass(frozen=True)
class TaskQuery:
    """Filters and paging for `TaskStore.list_tasks`; newest first."""

    statuses: frozenset[TaskStatus] | None = None
    name: str | None = None
    queue: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 50
    offset: int = 0
    #: Case-insensitive substring of the task id or name.
    text: str | None = None
    #: Only the tasks of this workflow (their `root_id`), e.g. `decortask show` of a workflow.
    root_id: str | None = None
    #: One of TASK_ORDERS: a key, "-" in front for descending; ties newest first (records created in
    #: one batch share a time: among them the order is the backend's).
    order: str = "-created"


@dataclass(frozen=True)
class TransitionStep:
    """One `TaskStore.transition` call, as data; with `max_deliveries` it is a claim (see `claim_step`).

    Attributes:
        expect: the statuses the record must be in (None: any); a frozenset, so a retry sees it again.
        max_deliveries: when set, the step also counts one more delivery of the attempt: it sets
            `deliveries` to the stored count plus one, and does nothing (None) when the stored count has
            already reached this cap.
        logs: whether the returned record carries its log lines (one more query).
        log_lines: lines appended to the task's log in the same atomic step (an attempt's buffered
            `task_log()` and captured lines riding with its outcome). They are appended whether or not the
            compare-and-set holds, since they record what the attempt did; not for an unknown task, nor by
            a step that raises its own error (which writes nothing).
        read_back: False when the caller asks only whether the step held (an attempt's outcome): a store
            may then skip reading the record back and return `NOT_READ_BACK` in its place.
    """

    task_id: str
    status: TaskStatus
    expect: frozenset[TaskStatus] | None = None
    expect_attempt: int | None = None
    schedule: ScheduleEntry | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    max_deliveries: int | None = None
    logs: bool = True
    log_lines: tuple[LogLine, ...] = ()
    read_back: bool = True


#: What a store may return for a step with `read_back=False` that held: written, not read back. Not a
#: real record; `StoreWriter.settle` turns it into True.
NOT_READ_BACK: TaskRecord = TaskRecord(
    id="", name="", queue="", status=TaskStatus.PENDING, created_at=0.0, updated_at=0.0
)


def claim_step(task_id: str, attempt: int, max_deliveries: int, **changes: Any) -> TransitionStep:
    """The claim of attempt `attempt` from a claimable record still at `attempt - 1` (RUNNING, CAS).

    `changes` are the claim's other fields (owner, started_at, ...); `deliveries` is counted by the store.
    """
    return TransitionStep(
        task_id,
        TaskStatus.RUNNING,
        expect=CLAIMABLE,
        expect_attempt=attempt - 1,
        changes={**changes, "attempt": attempt},
        max_deliveries=max_deliveries,
        logs=False,
    )


class Transitions(Protocol):
    """Compare-and-set transitions of task records: `apply_step` applies one `TransitionStep`, and
    `transition` is its keyword form, written once here.

    A class that subclasses this protocol (or `TaskStore`) explicitly inherits `transition` and implements
    only `apply_step`.
    """

    #: Whether the records `transition` returns carry their log lines (the group-commit writer's do not:
    #: the executor never reads them, and loading them costs SQLite one more query per step).
    returns_logs: ClassVar[bool] = True

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        """Apply `step` atomically; what `transition` returns or raises for the same arguments.

        A claim step (`max_deliveries` set) also counts one more delivery, and is None once the stored
        count has reached the cap. The returned record carries its log lines when `step.logs` (it may
        carry them anyway).
        """
        ...

    def transition(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        expect: Iterable[TaskStatus] | None = None,
        expect_attempt: int | None = None,
        schedule: ScheduleEntry | None = None,
        log_lines: Sequence[LogLine] = (),
        **changes: Any,
    ) -> TaskRecord | None:
        """Atomically move a task to `status` and set `changes` (names from MUTABLE_FIELDS).

        Compare-and-set: when `expect` is given the current status must be in it, and when `expect_attempt`
        is given the current attempt must equal it; otherwise nothing changes and None is returned.
        None is also returned for an unknown task. An expected transition that the state machine forbids
        raises `IllegalTransition` (via `states.check_transition`). With `schedule`, the entry is
        written in the same atomic step, and so are `log_lines` (see `TransitionStep`). Returns the
        updated record.
        """
        expected = frozenset(expect) if expect is not None else None  # an iterator must survive a retry
        step = TransitionStep(
            task_id,
            status,
            expected,
            expect_attempt,
            schedule,
            changes,
            None,
            self.returns_logs,
            tuple(log_lines),
        )
        return self.apply_step(step)


@runtime_checkable
class TaskStore(Transitions, Protocol):
    """What the producer, worker, handle and CLI need from a state store.

    Implementations must be safe to call from several threads of one process; the SQLite and Redis ones
    are also safe across processes (and Redis across hosts). `transition` and `apply_step` come from
    `Transitions`.
    """

    url: str

    def create(self, record: TaskRecord) -> TaskRecord:
        """Insert `record` and return it.

        If `record.idempotency_key` is set and another task holding that key exists (status in
        HOLDS_IDEMPOTENCY_KEY), insert nothing and return that task's record instead. Atomic.
        Raises `StoreError` if a record with the same id already exists.
        """
        ...

    def create_many(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        """`create` for many records in one atomic step (one transaction, one round trip).

        Returns, in order, what `create` would have returned for each record applied one after the other:
        a record whose idempotency key is held (also by an earlier record of the same batch) inserts
        nothing and returns the holder. Raises `StoreError` and inserts nothing if any id already exists.
        """
        ...

    def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None if unknown (or expired)."""
        ...

    def delete(self, task_id: str) -> None:
        """Remove a record (and its idempotency key); used when a publish fails after the record was written."""
        ...

    def append_log(self, task_id: str, line: LogLine) -> None:
        """Append one log line to the task's record."""
        ...

    def set_progress(
        self,
        task_id: str,
        progress: float,
        message: str | None = None,
        *,
        log_lines: Sequence[LogLine] = (),
        attempt: int | None = None,
    ) -> None:
        """Record progress (0.0..1.0) and an optional message; `log_lines` are appended in the same atomic
        step, before it (the running attempt's lines waiting in the worker). With `attempt`, the progress is
        set only while the record is RUNNING at that attempt: an attempt settled elsewhere (its worker was
        cut off) appends its lines and changes nothing else."""
        fields = {"progress": progress, "progress_message": message}
        self.set_running_fields(task_id, fields, log_lines, attempt)

    def set_output(
        self, task_id: str, output: Any, *, log_lines: Sequence[LogLine] = (), attempt: int | None = None
    ) -> None:
        """Replace the task's published partial output (`ctx.set_output`); nothing for an unknown task.
        `log_lines` are appended in the same atomic step, and `attempt` guards it, as with `set_progress`."""
        self.set_running_fields(task_id, {"output": output}, log_lines, attempt)

    def set_running_fields(
        self, task_id: str, fields: dict[str, Any], log_lines: Sequence[LogLine], attempt: int | None
    ) -> None:
        """What `set_progress` and `set_output` write, in one atomic step: append `log_lines`, then, if
        `running_at(record, attempt)`, set `fields` (names among `RUNNING_FIELDS`); nothing for an unknown
        task."""
        ...

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Records matching `query`, newest first, paged by limit/offset."""
        ...

    def count_tasks(self, query: TaskQuery) -> int:
        """How many records match `query` (ignoring limit/offset)."""
        ...

    def add_schedule(self, entry: ScheduleEntry) -> None:
        """Write a schedule entry (replacing one with the same id)."""
        ...

    def claim_due(self, now: float, limit: int, owner: str, lease: float) -> list[ScheduleEntry]:
        """Atomically claim up to `limit` entries with due_at <= now, oldest due first.

        A claimed entry is invisible to other claimers for `lease` seconds; the claimer publishes it and then
        calls `remove_schedule`. If the claimer dies, the lease lapses and another worker claims it again.
        """
        ...

    def remove_schedule(self, entry_ids: Sequence[str], *, claimed_by: str | None = None) -> None:
        """Delete schedule entries (after their messages were published).

        With `claimed_by`, only the entries that owner's claim still holds: an entry rewritten meanwhile
        (`add_schedule` forgets its claim: a receiver parked the published message again) is kept.
        """
        ...

    def count_schedule(self, queues: Iterable[str] | None = None) -> int:
        """Entries waiting (claimed or not), optionally only for `queues`."""
        ...

    def next_due(self, queues: Iterable[str] | None = None) -> float | None:
        """Earliest due_at among waiting entries, or None."""
        ...

    def heartbeat(self, worker_id: str, now: float) -> None:
        """Record that `worker_id` was alive at `now`."""
        ...

    def last_heartbeat(self, worker_id: str) -> float | None:
        """When `worker_id` last reported alive, or None if never (or forgotten)."""
        ...

    def heartbeats(self) -> dict[str, float]:
        """Every worker id the store still remembers, with its last heartbeat (for the dashboard)."""
        ...

    def worker_stopped(self, worker_id: str, now: float) -> None:
        """Record that `worker_id` stopped cleanly at `now`, so it is not mistaken for a lost worker."""
        ...

    def stopped_workers(self) -> dict[str, float]:
        """Worker ids that stopped cleanly (and are still remembered), with when."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete terminal records whose expires_at has passed; returns how many."""
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...

    def wait_for_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        """Block until the task's record is terminal and return it (`TaskHandle.wait` and `get`).

        After `timeout` seconds, the record as it is then (not terminal); None for an unknown task (or one
        deleted meanwhile). This default reads the record with a growing pause (`POLL_FIRST` up to
        `POLL_MAX`); a backend that learns of outcomes overrides it (memory, SQLite, Redis; a PostgreSQL
        store, issue 16, would LISTEN for a NOTIFY sent by the terminal transition's transaction).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_FIRST
        while True:
            record = self.get(task_id)
            left = None if deadline is None else deadline - time.monotonic()
            if record is None or record.status.terminal or (left is not None and left <= 0):
                return record
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)

    async def await_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        """`wait_for_outcome` for asyncio: store calls run in the loop's default executor, never on the loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_FIRST
        while True:
            record = await asyncio.to_thread(self.get, task_id)
            left = None if deadline is None else deadline - time.monotonic()
            if record is None or record.status.terminal or (left is not None and left <= 0):
                return record
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)


def apply_transition(record: TaskRecord, step: TransitionStep, now: float) -> TaskRecord | None:
    """The compare-and-set of `step` on `record`, for backends that run it in Python inside their own
    atomic step (memory, SQLite's general path): they load the current record, call this, and write the
    result back without letting another writer in between.

    Returns the new record, or None when an expectation does not hold or a claim's deliveries are spent.
    """
    changes = step.changes
    if step.max_deliveries is not None:  # a claim: count one more delivery, up to the cap
        if record.deliveries >= step.max_deliveries:
            return None
        changes = {**changes, "deliveries": record.deliveries + 1}
    if step.expect is not None and record.status not in step.expect:
        return None
    if step.expect_attempt is not None and record.attempt != step.expect_attempt:
        return None
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        raise ValueError(
            f"cannot set {sorted(unknown)} through transition(); allowed: {sorted(MUTABLE_FIELDS)}"
        )
    check_transition(record.id, record.status, step.status)
    return dataclasses.replace(record, status=step.status, updated_at=now, **changes)


#: The record fields a running attempt publishes (`TaskStore.set_running_fields`).
RUNNING_FIELDS = frozenset({"progress", "progress_message", "output"})


def running_at(record: TaskRecord, attempt: int | None) -> bool:
    """Whether a write of `attempt` (None: of any) may set a running task's fields (`set_progress`)."""
    return attempt is None or (record.status is TaskStatus.RUNNING and record.attempt == attempt)


def matches(record: TaskRecord, query: TaskQuery) -> bool:
    """Whether `record` passes `query`'s filters (paging aside); for backends that filter in Python."""
    if query.statuses is not None and record.status not in query.statuses:
        return False
    if query.name is not None and record.name != query.name:
        return False
    if query.queue is not None and record.queue != query.queue:
        return False
    if query.created_after is not None and record.created_at < query.created_after:
        return False
    if query.created_before is not None and record.created_at >= query.created_before:
        return False
    if query.root_id is not None and record.root_id != query.root_id:
        return False
    if query.text:
        needle = query.text.casefold()
        return needle in record.id.casefold() or needle in record.name.casefold()
    return True


def ordered(records: Iterable[TaskRecord], order: str) -> list[TaskRecord]:
    """`records` in `order` (one of TASK_ORDERS), ties newest first; for backends that sort in Python.

    `records` come in insertion order: among equal creation times the last inserted counts as newest.
    """
    newest = sorted(reversed(list(records)), key=lambda r: r.created_at, reverse=True)
    key = order.lstrip("-")
    if key == "created":
        return newest if order.startswith("-") else newest[::-1]

    def value(record: TaskRecord) -> str:
        return record.status.value if key == "status" else str(getattr(record, ORDER_FIELDS[key]))

    return sorted(newest, key=value, reverse=order.startswith("-"))  # stable: ties stay newest first
