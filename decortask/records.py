"""Conversions between a message (the envelope) and a task record (the store's view of it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from . import clock
from .config import Settings
from .message import Message
from .states import TaskStatus
from .store.base import LogLine, ScheduleEntry, TaskRecord

if TYPE_CHECKING:
    from .security import MessageCipher


def label(record: TaskRecord) -> str:
    """How the worker's log lines name a task: `name[id]`, as Celery's do."""
    return f"{record.name}[{record.id}]"


def record_from_message(message: Message, queue: str) -> TaskRecord:
    """A PENDING record for a message whose record is missing (a foreign producer's, or one that expired)."""
    now = clock.now()
    return TaskRecord(
        id=message.id,
        name=message.task,
        queue=queue,
        status=TaskStatus.PENDING,
        created_at=message.created_at or now,
        updated_at=now,
        args=message.args,
        kwargs=message.kwargs,
        tags=message.tags,
        idempotency_key=message.idempotency_key,
        priority=message.priority,
        parent_id=message.parent_id,
        root_id=message.root_id,
        workflow=message.workflow,
    )


def message_from_record(record: TaskRecord, cipher: MessageCipher | None = None) -> Message:
    """The message for the record's next attempt, rebuilt from what the store kept.

    The original `expires` is not kept in a record, so a rebuilt message has none.
    """
    return Message(
        id=record.id,
        task=record.name,
        args=list(record.args),
        kwargs=dict(record.kwargs),
        attempt=record.attempt + 1,
        created_at=record.created_at,
        idempotency_key=record.idempotency_key,
        tags=dict(record.tags),
        priority=record.priority,
        parent_id=record.parent_id,
        root_id=record.root_id,
        workflow=record.workflow,
        cipher=cipher,
    )


def schedule_entry(
    message: Message, queue: str, due_at: float, *, body: bytes | None = None, slot: str | None = None
) -> ScheduleEntry:
    """The schedule entry that publishes `message` to `queue` at `due_at` (id, body and priority from it).

    Args:
        body: the message already encoded (the producer's, size-checked); None: encoded here.
        slot: the entry's slot instead of the message's attempt number (`recheck`, see `ScheduleEntry`).
    """
    return ScheduleEntry.for_attempt(
        message.id,
        message.attempt if slot is None else slot,
        queue=queue,
        due_at=due_at,
        body=message.encode() if body is None else body,
        priority=message.priority,
    )


class EndedFields(TypedDict):
    finished_at: float
    expires_at: float


def ended_fields(settings: Settings, now: float, persist: bool = True) -> EndedFields:
    """What every terminal write sets besides the status: when the task ended and when its record goes.

    Persistent tasks are kept for `history_ttl`, `persist=False` ones for `result_ttl` (DESIGN §2 persist).
    """
    return {
        "finished_at": now,
        "expires_at": now + (settings.history_ttl if persist else settings.result_ttl),
    }


class SucceededFields(EndedFields):
    result: Any
    reason: None
    error_type: None
    error_message: None
    traceback: None


def succeeded_fields(settings: Settings, now: float, persist: bool, result: Any) -> SucceededFields:
    """What the SUCCESS write sets: the result, the end, and no error.

    A task that failed, was retried and then succeeded must not keep the earlier attempt's error as its
    own: SUCCESS clears it, and `failed_attempt_line` kept it in the task's log as history. Built here,
    once, so every store backend's SUCCESS write (Python, SQL, Lua) gets the same fields.
    """
    return {
        **ended_fields(settings, now, persist),
        "result": result,
        "reason": None,
        "error_type": None,
        "error_message": None,
        "traceback": None,
    }


def failed_attempt_line(
    attempt: int, error_type: str, error_message: str, retry_in: float | None, now: float
) -> LogLine:
    """The line a failed attempt leaves in its task's log: the attempts' history, read by `show` and the
    dashboard after a later attempt (or `decortask retry`) cleared the record's error.

    Args:
        error_message: already masked (`mask_text`).
        retry_in: seconds until the next attempt, or None when this attempt was the last.
    """
    then = f"; attempt {attempt + 1} in {retry_in:.2f} s" if retry_in is not None else ""
    message = f"attempt {attempt} failed: {error_type}: {error_message}{then}"
    return LogLine(ts=now, message=message, attempt=attempt, extra={"error_type": error_type})
