"""Redis state store: many workers on many hosts share one Redis.

Layout under the namespace `ns` (the URL's `?namespace=`, default `decortask`):

- `ns:task:ID` record JSON without logs; `ns:logs:ID` list of log-line JSON; `ns:idem:KEY` holder task id.
- `ns:index:created` zset of every task id scored by created_at; `ns:index:status:STATUS` the same per status;
  `ns:index:expires` terminal task ids scored by expires_at, for `purge_expired`.
- `ns:schedule:due` zset entry id -> due_at; `ns:schedule:queue:QUEUE` the same per queue;
  `ns:schedule:body` hash entry id -> entry JSON; `ns:schedule:claims` zset entry id -> claimed_until;
  `ns:schedule:owner` hash entry id -> claimer.
- `ns:heartbeat:WORKER`, `ns:stopped:WORKER`: liveness, see `redis_liveness`.
- Periodic tasks: `ns:lease:NAME` hash owner, until; `ns:periodic:state:NAME` hash last_slot, paused;
  `ns:periodic:names` set of schedule names.
- The outbox (redis_outbox.py): `ns:outbox:new` and `ns:outbox:sent` zsets id -> look_at, `ns:outbox:body`.

The Lua scripts touch keys they derive from a prefix, so this store wants plain Redis, not Redis Cluster.

create, transition, set_progress, append_log and the schedule operations are Lua scripts (redis_scripts.py),
each atomic on the server in one round trip; delete and purge are WATCH/MULTI compare-and-sets retried on
conflict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, IllegalTransition, StoreError
from ..security import mask_text, mask_url
from ..states import ALLOWED, HOLDS_IDEMPOTENCY_KEY, TERMINAL, TaskStatus, check_transition
from . import redis_events, redis_wait
from . import redis_scripts as scripts
from .base import (
    MUTABLE_FIELDS,
    LogLine,
    ScheduleEntry,
    TaskRecord,
    TaskStore,
    TransitionStep,
)
from .outbox_state import OutboxEntry
from .periodic_state import PeriodicStateStore, ScheduleState
from .redis_limits import RedisLimits
from .redis_liveness import RedisLiveness
from .redis_outbox import RedisOutbox, RedisOutboxMethods
from .redis_queries import RedisQueries, record_with_logs
from .redis_spawn import RedisSpawn
from .redis_workflow import RedisFollow, RedisWorkflowJoins

T = TypeVar("T")

DEFAULT_NAMESPACE = "decortask"
#: Ids fetched per round trip when listing, purging or scanning an index.
BATCH = 200


class RedisStore(
    redis_wait.OutcomeWaits,
    RedisLiveness,
    RedisQueries,
    TaskStore,
    PeriodicStateStore,
    RedisOutboxMethods,
    RedisWorkflowJoins,
    RedisLimits,
    RedisSpawn,
    RedisFollow,
):
    """A `TaskStore` in Redis, safe across threads, processes and hosts."""

    def __init__(self, url: str, *, events: int = 0) -> None:
        self.url = url
        self._masked = mask_url(url)
        client_url, self.namespace = _split_namespace(url)
        self._client_url = client_url
        try:
            self._client: Any = redis.Redis.from_url(
                client_url, decode_responses=True, socket_connect_timeout=5
            )
            pool = self._client.connection_pool
            pool.connection_class(
                **pool.connection_kwargs
            )  # refuses an unknown ?option now; connects nothing
        except (ValueError, TypeError, RedisError) as exc:
            raise ConfigurationError(
                f"invalid Redis store URL {self._masked!r}: {mask_text(str(exc))}; the query string takes "
                "namespace= and the options of redis-py's Redis.from_url"
            ) from exc
        ns = self.namespace
        self._created = f"{ns}:index:created"
        self._expires = f"{ns}:index:expires"
        self._sched = [f"{ns}:schedule:{part}" for part in ("due", "body", "claims", "owner")]
        self._queue_prefix = f"{ns}:schedule:queue:"
        self._follow = f"{ns}:follow"  # continuations pending (follow_state.py), by when they were marked
        lua = redis_events.prelude(ns, events)  # events > 0: writes append to the event feed
        self._create_script = self._client.register_script(lua + scripts.CREATE)
        self._outbox = RedisOutbox(self._client, ns, self._errors, lua)
        lua_transition = lua + redis_wait.prelude(ns) + scripts.TRANSITION  # PUBLISHes ended task ids
        self._transition_script = self._client.register_script(lua_transition)
        self._set_fields_script = self._client.register_script(lua + scripts.SET_FIELDS)
        self._append_script = self._client.register_script(lua + scripts.APPEND_LOG)
        self._add_script = self._client.register_script(scripts.SCHEDULE_ADD)
        self._remove_script = self._client.register_script(scripts.SCHEDULE_REMOVE)
        self._claim_script = self._client.register_script(scripts.CLAIM_DUE)
        self._lease_script = self._client.register_script(scripts.LEASE_ACQUIRE)
        self._release_script = self._client.register_script(scripts.LEASE_RELEASE)
        self._advance_script = self._client.register_script(scripts.SCHEDULE_ADVANCE)
        self._holding = ",".join(sorted(s.value for s in HOLDS_IDEMPOTENCY_KEY))
        self._terminal = ",".join(sorted(s.value for s in TERMINAL))
        #: For each status, the statuses it may follow (states.ALLOWED turned around), for the Lua check.
        self._may_follow = {
            target: ",".join(sorted(s.value for s, targets in ALLOWED.items() if target in targets))
            for target in TaskStatus
        }

    # -- keys ----------------------------------------------------------------------------------------------

    def _task(self, task_id: str) -> str:
        return f"{self.namespace}:task:{task_id}"

    def _logs(self, task_id: str) -> str:
        return f"{self.namespace}:logs:{task_id}"

    def _idem(self, key: str) -> str:
        return f"{self.namespace}:idem:{key}"

    def _status(self, status: TaskStatus) -> str:
        return f"{self.namespace}:index:status:{status.value}"

    # -- records -------------------------------------------------------------------------------------------

    def create(self, record: TaskRecord) -> TaskRecord:
        return self.create_many([record])[0]

    def create_many(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        if not records:
            return []
        args = self._create_args(records)
        with self._errors():
            # One script, so all records are written in one atomic step (and one round trip).
            replies = self._create_script(keys=[self._created, self._expires], args=args)
        return self._created_records(records, replies)

    def create_outboxed(
        self, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        replies = self._outbox.create([self._created, self._expires], self._create_args(records), entries)
        return self._created_records(records, replies)

    def _create_args(self, records: Sequence[TaskRecord]) -> list[Any]:
        """The CREATE script's arguments for `records` (see redis_scripts.CREATE)."""
        if len({record.id for record in records}) != len(records):
            raise StoreError("a task id repeats within the batch; task ids must be unique")
        ns = self.namespace
        args: list[Any] = [f"{ns}:task:", f"{ns}:logs:", f"{ns}:idem:", f"{ns}:index:status:", self._holding]
        for record in records:
            expiring = record.status in TERMINAL and record.expires_at is not None
            args.extend(
                [
                    record.id,
                    record.idempotency_key if record.idempotency_key is not None else "",
                    record.status.value,
                    _blob(record),
                    repr(record.created_at),
                    repr(record.expires_at) if expiring else "",
                    len(record.logs),
                    *(_json(line.to_dict()) for line in record.logs),
                ]
            )
        return args

    def _created_records(self, records: Sequence[TaskRecord], replies: Any) -> list[TaskRecord]:
        if replies[0] == "exists":
            raise StoreError(f"task {replies[1]} already exists; task ids must be unique")
        return [
            record_with_logs(reply[1], reply[2:]) if reply[0] == "held" else _copy(record)
            for record, reply in zip(records, replies, strict=True)
        ]

    def get(self, task_id: str) -> TaskRecord | None:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._task(task_id))
            pipe.lrange(self._logs(task_id), 0, -1)
            raw, lines = pipe.execute()
        return record_with_logs(raw, lines) if raw is not None else None

    def delete(self, task_id: str) -> None:
        self._delete_where([task_id], lambda record: True)

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        (outcome,) = self.transition_many([step])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def transition_many(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        """Apply `steps` in order in one script: one atomic step and one round trip (see `store/writer.py`).

        A step's own error (`IllegalTransition`, a field `transition` may not set) is returned in its place
        and writes nothing for that step; a failure of Redis raises `StoreError`.
        """
        ns = self.namespace
        args: list[Any] = [
            f"{ns}:task:",
            f"{ns}:logs:",
            f"{ns}:index:status:",
            self._queue_prefix,
            self._terminal,
        ]
        outcomes: list[TaskRecord | Exception | None] = [None] * len(steps)
        sent: list[int] = []
        now = repr(time.time())
        for index, step in enumerate(steps):
            unknown = set(step.changes) - MUTABLE_FIELDS
            if unknown:
                outcomes[index] = ValueError(
                    f"cannot set {sorted(unknown)} through transition(); allowed: {sorted(MUTABLE_FIELDS)}"
                )
                continue
            sent.append(index)
            entry = step.schedule
            args.extend(
                [
                    step.task_id,
                    step.status.value,
                    "*" if step.expect is None else ",".join(s.value for s in step.expect),
                    "" if step.expect_attempt is None else str(step.expect_attempt),
                    self._may_follow[step.status],
                    "" if step.max_deliveries is None else str(step.max_deliveries),
                    "1" if step.logs else "0",
                    *(
                        (entry.id, repr(entry.due_at), entry.queue, _entry_json(entry))
                        if entry is not None
                        else ("", "", "", "")
                    ),
                    len(step.changes) + 2,
                    "status",
                    _json(step.status.value),
                    "updated_at",
                    now,
                ]
            )
            for name, value in step.changes.items():
                args.extend([name, _json(value)])
            args.append(len(step.log_lines))
            args.extend(_json(line.to_dict()) for line in step.log_lines)
        if not sent:
            return outcomes
        with self._errors():
            replies = self._transition_script(keys=[self._expires, *self._sched, self._follow], args=args)
        for index, reply in zip(sent, replies, strict=True):
            if reply[0] == "ok":
                outcomes[index] = record_with_logs(reply[1], reply[2:])
            elif reply[0] == "illegal":
                try:
                    check_transition(steps[index].task_id, TaskStatus(reply[1]), steps[index].status)
                except IllegalTransition as exc:
                    outcomes[index] = exc
        return outcomes

    def append_log(self, task_id: str, line: LogLine) -> None:
        text = json.dumps(line.to_dict(), separators=(",", ":"))
        with self._errors():
            self._append_script(keys=[self._task(task_id), self._logs(task_id)], args=[text])

    def append_logs(self, task_id: str, lines: Sequence[LogLine]) -> None:
        """Append several lines of one task in one script call (captured output, `capture.py`)."""
        texts = [json.dumps(line.to_dict(), separators=(",", ":")) for line in lines]
        if texts:
            with self._errors():
                self._append_script(keys=[self._task(task_id), self._logs(task_id)], args=texts)

    def set_running_fields(
        self, task_id: str, fields: dict[str, Any], log_lines: Sequence[LogLine], attempt: int | None
    ) -> None:
        guard = "" if attempt is None else str(attempt)
        pairs = [part for name, value in fields.items() for part in (name, _json(value))]
        args = [guard, len(log_lines), *(_json(line.to_dict()) for line in log_lines), *pairs]
        with self._errors():
            self._set_fields_script(keys=[self._task(task_id), self._logs(task_id)], args=args)

    def purge_expired(self, now: float) -> int:
        def expired(record: TaskRecord) -> bool:
            return record.status in TERMINAL and record.expires_at is not None and record.expires_at <= now

        removed = 0
        while True:
            with self._errors():
                ids = self._client.zrangebyscore(self._expires, "-inf", repr(now), start=0, num=BATCH)
            if not ids:
                return removed
            removed += self._delete_where(ids, expired, tidy_expiry=True)

    # -- schedule ------------------------------------------------------------------------------------------

    def add_schedule(self, entry: ScheduleEntry) -> None:
        with self._errors():
            self._add_entries(self._client, [entry])

    def claim_due(self, now: float, limit: int, owner: str, lease: float) -> list[ScheduleEntry]:
        if limit <= 0:
            return []
        with self._errors():
            bodies = self._claim_script(
                keys=self._sched, args=[repr(now), limit, repr(now + lease), owner, BATCH]
            )
        return [ScheduleEntry(**json.loads(body)) for body in bodies if body]

    def remove_schedule(self, entry_ids: Sequence[str], *, claimed_by: str | None = None) -> None:
        ids = list(entry_ids)
        owner = claimed_by or ""
        with self._errors():
            for start in range(0, len(ids), BATCH):
                args = [self._queue_prefix, owner, *ids[start : start + BATCH]]
                self._remove_script(keys=self._sched, args=args)

    def count_schedule(self, queues: Iterable[str] | None = None) -> int:
        with self._errors():
            return sum(int(self._client.zcard(key)) for key in self._schedule_indexes(queues))

    def next_due(self, queues: Iterable[str] | None = None) -> float | None:
        dues: list[float] = []
        with self._errors():
            for key in self._schedule_indexes(queues):
                first = self._client.zrange(key, 0, 0, withscores=True)
                dues.extend(float(score) for _, score in first)
        return min(dues) if dues else None

    # -- workers -------------------------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(RedisError):
            self._client.close()

    # -- periodic tasks ------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        # The key itself outlives its lease by a minute, so an abandoned lease is cleaned up by Redis.
        args = [owner, repr(now + ttl), repr(now), int(ttl) + 60]
        with self._errors():
            return bool(self._lease_script(keys=[f"{self.namespace}:lease:{name}"], args=args))

    def release_lease(self, name: str, owner: str) -> None:
        with self._errors():
            self._release_script(keys=[f"{self.namespace}:lease:{name}"], args=[owner])

    def lease_owner(self, name: str, now: float) -> str | None:
        with self._errors():
            holder, until = self._client.hmget(f"{self.namespace}:lease:{name}", "owner", "until")
        return str(holder) if holder is not None and float(until) > now else None

    def schedule_state(self, name: str) -> ScheduleState | None:
        with self._errors():
            last, paused = self._client.hmget(
                f"{self.namespace}:periodic:state:{name}", "last_slot", "paused"
            )
        return _state(name, last, paused) if (last, paused) != (None, None) else None

    def schedule_states(self) -> list[ScheduleState]:
        with self._errors():
            names = sorted(_text(n) for n in self._client.smembers(f"{self.namespace}:periodic:names"))
        found = (self.schedule_state(name) for name in names)
        return [state for state in found if state is not None]

    def advance_schedule(self, name: str, slot: float) -> ScheduleState:
        keys = [f"{self.namespace}:periodic:state:{name}", f"{self.namespace}:periodic:names"]
        with self._errors():
            last, paused = self._advance_script(keys=keys, args=[name, repr(slot)])
        return _state(name, last, paused)

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        key = f"{self.namespace}:periodic:state:{name}"
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, "paused", int(paused))
            pipe.sadd(f"{self.namespace}:periodic:names", name)
            pipe.hmget(key, "last_slot", "paused")
            last, stored = pipe.execute()[-1]
        return _state(name, last, stored)

    # -- helpers -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn redis-py failures into `StoreError`s that name the (masked) URL."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreError(
                f"cannot reach the Redis store at {self._masked}: {exc}; check that Redis is running and "
                "reachable from this host, and that the store URL is right"
            ) from exc
        except RedisError as exc:
            raise StoreError(f"the Redis store at {self._masked} failed: {exc}") from exc

    def _add_entries(self, client: Any, entries: Sequence[ScheduleEntry]) -> None:
        args: list[Any] = [self._queue_prefix]
        for e in entries:
            args.extend([e.id, repr(e.due_at), e.queue, _entry_json(e)])
        self._add_script(keys=self._sched, args=args, client=client)

    def _delete_where(
        self, task_ids: Sequence[str], condition: Callable[[TaskRecord], bool], *, tidy_expiry: bool = False
    ) -> int:
        """Atomically delete those of `task_ids` whose record passes `condition`; returns how many.

        With `tidy_expiry`, the expiry index entries of the others are corrected (or dropped) in the same
        step, so `purge_expired` never sees them again under a stale score.
        """
        keys = [self._task(task_id) for task_id in task_ids]

        def step(pipe: Any) -> int:
            found = zip(task_ids, pipe.mget(keys), strict=True)
            records = {task_id: TaskRecord.from_json(raw) for task_id, raw in found if raw is not None}
            doomed = {r.id: r for r in records.values() if condition(r)}
            idem = [self._idem(r.idempotency_key) for r in doomed.values() if r.idempotency_key is not None]
            holders: dict[str, str | None] = {}
            if idem:
                pipe.watch(*idem)
                holders = dict(zip(idem, pipe.mget(idem), strict=True))
            pipe.multi()
            for record in doomed.values():
                pipe.delete(self._task(record.id), self._logs(record.id))
                pipe.zrem(self._created, record.id)
                pipe.zrem(self._status(record.status), record.id)
                pipe.zrem(self._name_index(record.name), record.id)
                pipe.zrem(self._queue_index(record.queue), record.id)
                if record.root_id is not None:
                    pipe.zrem(self._root_index(record.root_id), record.id)
                pipe.zrem(self._expires, record.id)
                key = record.idempotency_key
                # A key another task has since taken over points at that task and stays.
                if key is not None and holders.get(self._idem(key)) == record.id:
                    pipe.delete(self._idem(key))
            for task_id in task_ids if tidy_expiry else ():
                kept = records.get(task_id)
                if (
                    kept is not None
                    and task_id not in doomed
                    and kept.status in TERMINAL
                    and kept.expires_at is not None
                ):
                    pipe.zadd(self._expires, {task_id: kept.expires_at})
                else:
                    pipe.zrem(self._expires, task_id)
            pipe.execute()
            return len(doomed)

        return self._watched(keys, step)

    def _watched(self, keys: Sequence[str], step: Callable[[Any], T]) -> T:
        """Run `step(pipe)` with `keys` watched, again and again until no other writer got in between.

        `step` reads in immediate mode, then queues its writes after `pipe.multi()` and executes them; a
        WatchError from that execute means a watched key changed since the read, so the read is redone.
        """
        with self._errors(), self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    return step(pipe)
                except WatchError:
                    continue

    def _schedule_indexes(self, queues: Iterable[str] | None) -> list[str]:
        if queues is None:
            return [self._sched[0]]
        return [self._queue_prefix + queue for queue in sorted(set(queues))]


def _split_namespace(url: str) -> tuple[str, str]:
    """The URL for redis-py (without `namespace=`) and the key namespace."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    namespace = next((value for name, value in reversed(params) if name == "namespace"), DEFAULT_NAMESPACE)
    rest = [(name, value) for name, value in params if name != "namespace"]
    if not namespace or any(ch.isspace() for ch in namespace):
        raise ConfigurationError(
            f"Redis store URL {mask_url(url)!r} has an invalid namespace {namespace!r}: "
            "use letters, digits and ':_-'"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), namespace


def _blob(record: TaskRecord) -> str:
    """The stored JSON: the record without its logs, which live in their own list."""
    data = record.to_dict()
    data["logs"] = []
    return json.dumps(data, separators=(",", ":"))


def _copy(record: TaskRecord) -> TaskRecord:
    return record.detached()


def _json(value: Any) -> str:
    """One field's JSON text, as `_blob` writes it inside the record."""
    return json.dumps(value, separators=(",", ":"))


def _entry_json(entry: ScheduleEntry) -> str:
    return json.dumps(dataclasses.asdict(entry), separators=(",", ":"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state(name: str, last: Any, paused: Any) -> ScheduleState:
    return ScheduleState(name, float(last) if last is not None else None, str(paused or "0") == "1")
