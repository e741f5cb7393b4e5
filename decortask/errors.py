"""Every error decortask raises derives from `DecortaskError`.

Each message says what went wrong and what to do about it.
"""

from __future__ import annotations


class DecortaskError(Exception):
    """Root of every decortask error."""


class ConfigurationError(DecortaskError, ValueError):
    """A setting, URL, option or call argument is invalid."""


class TaskDefinitionError(ConfigurationError):
    """`@task` was given an unknown option or a bad value."""


class DuplicateTaskError(TaskDefinitionError):
    """Two tasks were registered under one name."""


class UnknownTaskError(DecortaskError, LookupError):
    """No task is registered under a name."""


class ArgumentEncodingError(DecortaskError, TypeError):
    """A task argument or result cannot be encoded as JSON."""


class PayloadTooLargeError(DecortaskError, ValueError):
    """An encoded message is larger than `max_payload_bytes`."""


class MessageError(DecortaskError):
    """A received message cannot be accepted; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str, task_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        #: The envelope's task id when it could be read, so the task's record can say why it failed.
        self.task_id = task_id


class BrokerUnavailable(DecortaskError, ConnectionError):
    """The broker could not be reached within the retry budget."""


class QueueMismatch(BrokerUnavailable):
    """A queue exists on the broker with other arguments than decortask declares (e.g. a quorum queue).

    RabbitMQ refuses the declaration (PRECONDITION_FAILED), so nothing can be published to or consumed from
    that queue until it is deleted or another name is used. A `BrokerUnavailable`, so every caller that
    handles "could not publish" handles this too.
    """


class StoreError(DecortaskError):
    """The state store failed or holds something unexpected."""


class IllegalTransition(StoreError):
    """A state change the semantics contract forbids; always a bug."""


class TaskNotFound(DecortaskError, LookupError):
    """The store has no record for a task id (wrong store, or the record expired)."""


class TaskStateConflict(DecortaskError):
    """The task is not in a state that allows the action (e.g. retrying a RUNNING task).

    `status` is the state the task was found in, so callers such as the dashboard can answer 409.
    """

    def __init__(self, message: str, task_id: str, status: object | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status


class TaskNotDone(DecortaskError):
    """A handle was asked for a result before the task reached a terminal state."""


class WaitTimeout(DecortaskError, TimeoutError):
    """`wait()`/`get()` gave up before the task finished."""


class TaskFailed(DecortaskError):
    """The task ended FAILED or INTERRUPTED; carries the remote error as strings."""

    def __init__(
        self,
        task_id: str,
        status: str,
        reason: str | None,
        error_type: str | None,
        error_message: str | None,
        traceback: str | None,
    ) -> None:
        what = f"{error_type}: {error_message}" if error_type else (reason or status)
        super().__init__(f"task {task_id} ended {status}: {what}")
        self.task_id = task_id
        self.status = status
        self.reason = reason
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = traceback


class TaskCancelled(DecortaskError):
    """The task ended CANCELLED."""


class GraphError(ConfigurationError):
    """A graph (`decortask.Graph`) cannot be built: a bad or repeated node name, a dependency on a node the
    graph does not have, a cycle, or arguments that do not fit a node's task."""


class GraphFailed(DecortaskError):
    """A graph ended FAILED or CANCELLED; `states` holds each node's final status by name."""

    def __init__(self, graph_id: str, status: str, message: str, states: dict[str, str]) -> None:
        super().__init__(f"graph {graph_id} ended {status}: {message}")
        self.graph_id = graph_id
        self.status = status
        self.states = states


class TimeLimitExceeded(DecortaskError):
    """A task ran past its `timeout`; recorded as FAILED (timeout) once no retries remain."""


class TaskInterrupted(BaseException):  # a control-flow signal, like KeyboardInterrupt
    """Raised inside a task's thread to stop it by force (cancellation past `cancel_grace`, a time limit).

    It derives from BaseException, not DecortaskError, so that a task's `except Exception:` does not
    swallow it. Tasks should not catch it; check `ctx.should_stop()` to stop cleanly instead.
    """


class Retry(DecortaskError):
    """Raise inside a task to ask for another attempt, optionally after `delay` seconds."""

    def __init__(self, delay: float | None = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay = delay


def missing_extra(what: str, extra: str, exc: ImportError) -> ConfigurationError:
    """The error for a feature whose optional dependencies (the extra `extra`) are not installed.

    Built in one place so every such message names the missing module and the install line.
    """
    return ConfigurationError(
        f"{what} needs the '{extra}' extra, which is not installed (no module named "
        f"{exc.name or str(exc)!r}): pip install 'decortask[{extra}]'"
    )
