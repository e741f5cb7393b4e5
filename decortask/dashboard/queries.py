"""What the dashboard shows, as JSON-ready dicts: tasks, counts, workers, queues and dead letters.

Plain synchronous functions over the app's store and transport (the endpoints run them in a thread). Every
string that reaches a page passes through `scrub`, so a secret in an error, a log line or an argument is
masked here even if the code that wrote it forgot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..deadletters import dead_letter_queue, list_dead_letters
from ..errors import DecortaskError
from ..security import mask_text, mask_url, masked_args, scrub
from ..states import TaskStatus
from ..store.base import TaskQuery, TaskRecord, matches

if TYPE_CHECKING:
    from ..app import Decortask
    from ..registry import Registry

#: Most records the tag filter (which the stores cannot run themselves) looks through, in list order.
SCAN_LIMIT = 5000
#: Records read per store call while scanning.
SCAN_BATCH = 200
MAX_PAGE = 500
#: Recent records whose queues the queue panel lists (besides the default queue and configured ones).
QUEUE_DISCOVERY = 500


# -- tasks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFilter:
    """The task list's filters, order and page: the store runs all but `tag`."""

    statuses: frozenset[TaskStatus] | None = None
    name: str | None = None
    queue: str | None = None
    #: `key=value` (or just `key`): tasks whose tags have it.
    tag: str | None = None
    #: Case-insensitive substring of the task id or name.
    text: str | None = None
    #: `TaskQuery.order`: created, name, status or queue, "-" in front for descending.
    order: str = "-created"
    limit: int = 50
    offset: int = 0

    def store_query(self, limit: int, offset: int) -> TaskQuery:
        return TaskQuery(
            statuses=self.statuses,
            name=self.name,
            queue=self.queue,
            text=self.text,
            order=self.order,
            limit=limit,
            offset=offset,
        )

    def matches(self, record: TaskRecord) -> bool:
        if self.tag:
            key, has_value, value = self.tag.partition("=")
            if key not in record.tags or (has_value and record.tags[key] != value):
                return False
        return True


def task_summary(record: TaskRecord) -> dict[str, Any]:
    """One row of the task list."""
    return {
        "id": record.id,
        "name": record.name,
        "queue": record.queue,
        "status": record.status.value,
        "reason": record.reason,
        "attempt": record.attempt,
        "priority": record.priority,
        "tags": scrub(record.tags),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "runtime": _runtime(record),
        "scheduled_for": record.scheduled_for,
        "progress": scrub(record.progress),
        "progress_message": scrub(record.progress_message),
        "error_type": scrub(record.error_type),
        "owner": record.owner,
        "cancel_requested": record.cancel_requested_at is not None,
        "log_count": len(record.logs),
    }


def _runtime(record: TaskRecord) -> float | None:
    """Seconds the last attempt ran, once it has ended (a running one is timed by the page)."""
    if record.started_at is None or record.finished_at is None:
        return None
    return max(0.0, record.finished_at - record.started_at)


def task_detail(
    record: TaskRecord, *, include_args: bool = False, registry: Registry | None = None
) -> dict[str, Any]:
    """Everything about one task. Arguments only when asked for, and masked even then.

    With `registry` (the tasks this process defines), positional arguments whose parameter has a
    secret-looking name (`password`, `api_key`, ...) are masked too.
    """
    detail = task_summary(record)
    detail.update(
        {
            "result": scrub(record.result),
            "output": scrub(record.output),
            "error_message": scrub(record.error_message),
            "traceback": scrub(record.traceback),
            "logs": [
                {
                    "ts": line.ts,
                    "attempt": line.attempt,
                    "message": scrub(line.message),
                    "extra": scrub(line.extra),
                }
                for line in record.logs
            ],
            "expires_at": record.expires_at,
            "cancel_requested_at": record.cancel_requested_at,
            "deliveries": record.deliveries,
            "persist": record.persist,
            "parent_id": record.parent_id,
            "root_id": record.root_id,
            "idempotency_key": scrub(record.idempotency_key),
            "args_included": include_args,
        }
    )
    if include_args:
        detail["args"] = masked_args(record, registry)
        detail["kwargs"] = scrub(record.kwargs)
    return detail


def list_tasks(app: Decortask, flt: TaskFilter) -> dict[str, Any]:
    """A page of tasks in the filter's order (newest first by default), with the total count.

    The store filters, orders and pages (text search included). The tag filter is applied here over at
    most SCAN_LIMIT of the matching records; `total_exact` is False when that window was not enough.
    """
    store = app.store
    limit = max(1, min(flt.limit, MAX_PAGE))
    offset = max(0, flt.offset)
    if flt.text:
        exact = store.get(flt.text.strip())
        if exact is not None and _store_filters_pass(exact, flt):
            rows = [exact] if offset == 0 else []
            return _page([task_summary(r) for r in rows], 1, True, limit, offset)
    if not flt.tag:
        rows = store.list_tasks(flt.store_query(limit, offset))
        if 0 < len(rows) < limit or (offset == 0 and not rows):
            total = offset + len(rows)  # the last page: no count needed (a text search scans once, not twice)
        else:
            total = store.count_tasks(flt.store_query(limit, 0))
        return _page([task_summary(r) for r in rows], total, True, limit, offset)
    found: list[TaskRecord] = []
    matched = 0
    scanned = 0
    exhausted = False
    while scanned < SCAN_LIMIT:
        batch = store.list_tasks(flt.store_query(SCAN_BATCH, scanned))
        scanned += len(batch)
        for record in batch:
            if flt.matches(record):
                if offset <= matched < offset + limit:
                    found.append(record)
                matched += 1
        if len(batch) < SCAN_BATCH:
            exhausted = True
            break
    return _page([task_summary(r) for r in found], matched, exhausted, limit, offset)


def _store_filters_pass(record: TaskRecord, flt: TaskFilter) -> bool:
    return matches(record, flt.store_query(1, 0)) and flt.matches(record)


def _page(rows: list[dict[str, Any]], total: int, exact: bool, limit: int, offset: int) -> dict[str, Any]:
    return {"tasks": rows, "total": total, "total_exact": exact, "limit": limit, "offset": offset}


def status_counts(app: Decortask) -> dict[str, int]:
    """How many records the store holds in each state (each count is one indexed store query)."""
    counts = {
        status.value: app.store.count_tasks(TaskQuery(statuses=frozenset({status}))) for status in TaskStatus
    }
    counts["total"] = sum(counts.values())
    return counts


# -- workers -------------------------------------------------------------------------------------------


def workers(app: Decortask, now: float | None = None) -> list[dict[str, Any]]:
    """Workers (and process-pool children) from their heartbeats in the store, live ones first.

    A worker counts as alive while its last heartbeat is younger than `lease_timeout`, the same rule the
    workers use for each other. One that is not is `stopped` when it said so as it shut down cleanly, and
    `lost` otherwise (killed, crashed or cut off: the others recover its tasks).
    """
    now = time.time() if now is None else now
    beats = app.store.heartbeats()
    stops = app.store.stopped_workers()
    running: dict[str, int] = {}
    for record in app.store.list_tasks(TaskQuery(statuses=frozenset({TaskStatus.RUNNING}), limit=MAX_PAGE)):
        if record.owner:
            running[record.owner] = running.get(record.owner, 0) + 1
    rows: list[dict[str, Any]] = []
    for worker_id, seen in beats.items():
        host, pid = _host_pid(worker_id)
        stopped_at = stops.get(worker_id)
        stopped = stopped_at is not None and stopped_at >= seen
        alive = not stopped and now - seen <= app.settings.lease_timeout
        rows.append(
            {
                "id": worker_id,
                "host": host,
                "pid": pid,
                "last_seen": seen,
                "age": max(0.0, now - seen),
                "alive": alive,
                "state": "alive" if alive else ("stopped" if stopped else "lost"),
                "stopped_at": stopped_at if stopped else None,
                "running": running.get(worker_id, 0),
            }
        )
    rows.sort(key=lambda row: (not row["alive"], -row["last_seen"]))
    return rows


def _host_pid(worker_id: str) -> tuple[str | None, int | None]:
    """Host and pid from an id made by `decortask.worker.new_worker_id` (`host:pid:random`)."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None, None


# -- queues and dead letters ---------------------------------------------------------------------------


def queue_names(app: Decortask, configured: Iterable[str] = ()) -> list[str]:
    """The default queue, the configured ones, and every queue a recent task was sent to."""
    names = {app.settings.default_queue, *configured}
    names.update(r.queue for r in app.store.list_tasks(TaskQuery(limit=QUEUE_DISCOVERY)))
    return sorted(names)


def queues(app: Decortask, configured: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Each queue's ready messages, dead letters, waiting schedule entries and running tasks.

    A broker failure is reported on the queue (masked), not raised: the rest of the page still works.
    """
    rows = []
    for name in queue_names(app, configured):
        row: dict[str, Any] = {"name": name, "dead_letter_queue": dead_letter_queue(name)}
        try:
            row["ready"] = app.transport.queue_size(name)
            row["dead_letters"] = app.transport.queue_size(dead_letter_queue(name))
            row["error"] = None
        except (DecortaskError, OSError) as exc:
            row.update(ready=None, dead_letters=None, error=broker_problem(app, exc))
        row["scheduled"] = app.store.count_schedule([name])
        row["running"] = app.store.count_tasks(
            TaskQuery(statuses=frozenset({TaskStatus.RUNNING}), queue=name)
        )
        rows.append(row)
    return rows


def dead_letters(app: Decortask, queue: str | None, limit: int) -> dict[str, Any]:
    """The dead letters of `queue` (default: the default queue), without removing them."""
    name = queue or app.settings.default_queue
    letters = list_dead_letters(app, name, max(1, min(limit, MAX_PAGE)))
    return {
        "queue": name,
        "dead_letter_queue": dead_letter_queue(name),
        "dead_letters": [scrub(letter.to_dict()) for letter in letters],
    }


def broker_problem(app: Decortask, exc: BaseException) -> str:
    """A masked, one-line description of a broker failure."""
    text = mask_text(f"{type(exc).__name__}: {exc}")
    return text.replace(app.settings.broker_url, mask_url(app.settings.broker_url))


def overview(app: Decortask) -> dict[str, Any]:
    """What the page header shows: the (masked) broker and store, and the default queue."""
    from .. import __version__

    return {
        "version": __version__,
        "broker": mask_url(app.settings.broker_url),
        "store": mask_url(app.settings.store_url),
        "default_queue": app.settings.default_queue,
        "lease_timeout": app.settings.lease_timeout,
    }
