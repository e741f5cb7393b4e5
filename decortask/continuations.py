"""What every workflow writes when a task of it ends (`workflow.py` for chains, chords and links, `graph_run.py`
for graphs): the next task, created once under its derived id, or the record of a task that will never run.

Each helper takes `write`, the caller's way to make a store call patiently (the executor's `write` retries
while the store is busy or away; recovery and a client call it directly).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import (
    ArgumentEncodingError,
    ConfigurationError,
    PayloadTooLargeError,
    StoreError,
    UnknownTaskError,
)
from .outcomes import Reason
from .records import ended_fields
from .states import TaskStatus
from .store.base import TaskRecord

if TYPE_CHECKING:
    from .app import Decortask
    from .canvas import Signature
    from .producer import Lineage

logger = logging.getLogger("decortask.worker")
#: A store call made patiently: the executor's `write` (retries while the store is busy or away).
Write = Callable[[Callable[[], Any]], Any]


def describe(record: TaskRecord) -> str:
    """`name (task <id>) ended FAILED (reason): Error: message`, for the record of a failed step."""
    reason = f" ({record.reason})" if record.reason else ""
    error = f": {record.error_type}: {record.error_message}" if record.error_type else ""
    if not error and record.error_message:
        error = f": {record.error_message}"
    return f"{record.name} (task {record.id}) ended {record.status.value}{reason}{error}"


def outcome_value(record: TaskRecord | None, task_id: str, pass_failures: bool) -> Any:
    """What a task that did not run yet gets in place of one that ended: its result if it succeeded; else
    (when failures are passed) `{"task_id", "status", "error_type", "error_message"}`, else None."""
    if record is not None and record.status is TaskStatus.SUCCESS:
        return record.result
    if not pass_failures:  # only tasks that succeeded are passed on: this one's record is gone (expired)
        return None
    return {
        "task_id": task_id,
        "status": record.status.value if record else None,
        "error_type": record.error_type if record else None,
        "error_message": record.error_message if record else "its record is gone",
    }


def exists(app: Decortask, task_id: str, write: Write) -> bool:
    return write(lambda: app.store.get(task_id)) is not None


def once(app: Decortask, task_id: str, create: Callable[[], object], write: Write) -> bool:
    """Run `create` (which writes task `task_id`) through `write` unless the task exists; whether it wrote
    it. A refused duplicate is another worker's creation first, not a store failure to retry."""

    def attempt() -> bool:
        try:
            create()
        except StoreError:
            if app.store.get(task_id) is None:
                raise  # a real failure: `write` retries it
            return False
        return True

    return not exists(app, task_id, write) and bool(write(attempt))


def create(app: Decortask, sig: Signature[Any], lineage: Lineage, write: Write) -> bool:
    """Create and publish `sig` under its derived id unless it exists; a call that cannot be made (its
    task unknown here, arguments that do not fit) is written FAILED in its place instead, and then True is
    returned (the caller fails what follows it)."""
    assert lineage.task_id is not None
    try:
        once(app, lineage.task_id, lambda: sig.send(app, lineage), write)
        return False
    except (
        UnknownTaskError,
        TypeError,
        ArgumentEncodingError,
        PayloadTooLargeError,
        ConfigurationError,
    ) as exc:
        parent = app.store.get(lineage.parent_id) if lineage.parent_id else None
        why = f"{sig.name} could not be enqueued after task {lineage.parent_id}: {exc}"
        write_unrun(
            app, lineage.task_id, sig, why, parent, lineage.root_id or "", write, workflow=lineage.workflow
        )
        return True


def write_unrun(
    app: Decortask,
    task_id: str,
    sig: Signature[Any],
    why: str,
    cause: TaskRecord | None,
    root_id: str,
    write: Write,
    *,
    workflow: dict[str, Any] | None = None,
    status: TaskStatus = TaskStatus.FAILED,
    reason: Reason = Reason.WORKFLOW_FAILED,
) -> None:
    """Write the record of `sig`'s task (id `task_id`) ended `status` with `why`, unless it exists: it never
    runs. FAILED (`workflow_failed`) for a chain's or chord's end that cannot come; a graph's skipped node
    is CANCELLED (`skipped`) and keeps its `workflow`, so what follows it can be found from its record."""
    task = app.registry.find(sig.name)
    now = time.time()
    queue = sig.options.get("queue") or (task.options.queue if task else None) or app.settings.default_queue
    failed = status is TaskStatus.FAILED
    record = TaskRecord(
        id=task_id,
        name=sig.name,
        queue=str(queue),
        status=status,
        created_at=now,
        updated_at=now,
        args=list(sig.args),
        kwargs=dict(sig.kwargs),
        reason=reason,
        error_type=(cause.error_type if cause is not None and cause.error_type else "WorkflowFailed")
        if failed
        else None,
        error_message=why,
        parent_id=cause.id if cause is not None else None,
        root_id=root_id or None,
        persist=task.options.persist if task else True,
        workflow=workflow,
        **ended_fields(app.settings, now, task.options.persist if task else True),
    )
    if once(app, task_id, lambda: app.store.create(record), write):
        logger.warning("task %s (%s) %s without running: %s", task_id, sig.name, status.value, why)
