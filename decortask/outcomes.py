"""The outcome vocabulary: why a task ended or a delivery was settled, and what happens to the delivery.

- `Reason`: every reason a record or a settled delivery carries (`worker_lost`, `timeout`, ...), one enum.
  It is a `str` enum: the store keeps exactly the strings it always kept, a record read from an older store
  compares equal to its member, and `str()`/`format()` of a member is its value.
- `ExecutionOutcome`: how one attempt's code ended (what `after_execute` middleware sees).
- `Settle` and `Outcome`: the executor's verdict for one delivery, which the consumer thread applies.
- `failure_outcome`: the one rule that turns a failed attempt into a retry (with its delay) or a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import TimeLimitExceeded
from .retry import RetryPolicy
from .states import TaskStatus
from .text_enum import TextEnum


class Reason(TextEnum):
    """Why a task ended, a message was refused, or a delivery was settled without running."""

    # -- a terminal record's reason ------------------------------------------------------------------------
    #: The message expired before it ran (CANCELLED).
    EXPIRED = "expired"
    #: Cancelled by request (CANCELLED).
    CANCELLED = "cancelled"
    #: Ran past its time limit (FAILED, or retried).
    TIMEOUT = "timeout"
    #: Its worker (or process-pool child) died while it ran (INTERRUPTED, or its next attempt queued).
    WORKER_LOST = "worker_lost"
    #: Its worker shut down past the grace period while it ran (INTERRUPTED, or its next attempt queued).
    SHUTDOWN = "shutdown"
    #: Taken up too often by workers that died with it (FAILED, dead-lettered).
    MAX_DELIVERIES = "max_deliveries"
    #: No task of that name is registered in the worker (FAILED, dead-lettered).
    UNREGISTERED_TASK = "unregistered_task"
    #: The message's arguments do not fit the function (FAILED without running, no retries burned).
    BAD_ARGUMENTS = "bad_arguments"
    #: The return value cannot be stored as JSON (FAILED).
    RESULT_NOT_SERIALIZABLE = "result_not_serializable"
    #: `decortask purge` deleted its message before it ran (CANCELLED).
    PURGED = "purged"
    #: An earlier step of its chain, or a member of its chord, did not succeed: it never ran (FAILED).
    WORKFLOW_FAILED = "workflow_failed"
    #: A graph node whose required dependency did not succeed, or whose graph was cancelled: it never ran
    #: (CANCELLED).
    SKIPPED = "skipped"
    # -- a refused message (dead-lettered; its task FAILED when known) --------------------------------------
    DECODE_ERROR = "decode_error"
    INTEGRITY_ERROR = "integrity_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    CONTENT_TYPE_NOT_ALLOWED = "content_type_not_allowed"
    INVALID_ENVELOPE = "invalid_envelope"
    UNSUPPORTED_VERSION = "unsupported_version"
    COMPRESSION_NOT_ALLOWED = "compression_not_allowed"
    # -- a delivery acked without running (the record says why) ---------------------------------------------
    #: The task has ended already (or its idempotency key is held by another task).
    DUPLICATE = "duplicate"
    #: The message is for an attempt older than the record's.
    STALE = "stale"
    #: Another worker claimed the attempt first, or the record moved on while this one was written.
    LOST_CLAIM = "lost_claim"
    #: Its eta lies ahead: parked in the store's schedule.
    DEFERRED = "deferred"
    #: A live worker runs the task: parked, checked again after its lease.
    RUNNING_ELSEWHERE = "running_elsewhere"
    #: Over its rate limit: parked in the store's schedule until its reserved start (issue 17).
    RATE_LIMITED = "rate_limited"
    #: Every slot of its concurrency limit is held: parked in the store's schedule, tried again soon.
    CONCURRENCY_LIMITED = "concurrency_limited"
    #: The record is in a state no delivery expects.
    UNEXPECTED_STATE = "unexpected_state"
    #: A process-pool child wrote its attempt's outcome, then died before reporting it.
    SETTLED = "settled"


def as_reason(text: str) -> Reason | str:
    """The `Reason` whose value is `text`; `text` itself for a reason this version does not know (written
    by a newer version into a store or a header), which is carried on as it is, never refused."""
    try:
        return Reason(text)
    except ValueError:
        return text


class Settle(str, Enum):
    """What the consumer thread does with the delivery once the executor is done."""

    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Outcome:
    """The executor's verdict for one delivery.

    `reason` is a `Reason` (a process-pool child's outcome reaches its parent as the same text, a plain
    str). `task_id` and `task_name` are set on a dead-letter outcome when they could be read (for its log
    line).
    """

    settle: Settle
    status: TaskStatus | None = None
    reason: str | None = None
    detail: str = ""
    ran: bool = False
    task_id: str | None = None
    task_name: str | None = None


@dataclass(frozen=True)
class ExecutionOutcome:
    """How one attempt ended, as `after_execute` sees it.

    Attributes:
        status: the state the attempt leads to: `SUCCESS`, `RETRYING` (another attempt follows), `FAILED`
            or `CANCELLED`. (Interruptions are settled outside the attempt: see `on_interrupt`.)
        result: the return value (on `SUCCESS`), else None.
        exception: what the task raised (on `RETRYING`/`FAILED`, and for a forced stop), else None.
        retry_delay: seconds until the next attempt when `status` is `RETRYING`, else None.
        reason: the terminal record's reason where one applies (`timeout`, `cancelled`,
            `result_not_serializable`, ...): a `Reason`.
    """

    status: TaskStatus
    result: Any = None
    exception: BaseException | None = None
    retry_delay: float | None = None
    reason: Reason | None = None

    @property
    def will_retry(self) -> bool:
        """True when another attempt of the task follows this one."""
        return self.status is TaskStatus.RETRYING

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCESS


def failure_outcome(policy: RetryPolicy, attempt: int, exc: BaseException) -> ExecutionOutcome:
    """The one decision for a failed attempt: RETRYING with its delay (decided here, once: jitter is
    random), or FAILED (`timeout` when it ran past its time limit).

    Args:
        policy: the task's retry policy.
        attempt: the number of the attempt that failed (1-based).
        exc: what it failed with.
    """
    delay = policy.next_delay(attempt, exc)
    if delay is not None:
        return ExecutionOutcome(TaskStatus.RETRYING, exception=exc, retry_delay=delay)
    reason = Reason.TIMEOUT if isinstance(exc, TimeLimitExceeded) else None
    return ExecutionOutcome(TaskStatus.FAILED, exception=exc, reason=reason)
