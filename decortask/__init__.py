"""decortask: a task queue as easy as a decorator, as reliable as the broker allows."""

from __future__ import annotations

from .app import Decortask, current_app
from .canvas import (
    Chain,
    Chord,
    Group,
    GroupHandle,
    Signature,
    WorkflowHandle,
    chain,
    chord,
    group,
    signature,
)
from .context import TaskContext, get_task_context, task_log
from .errors import (
    ArgumentEncodingError,
    BrokerUnavailable,
    ConfigurationError,
    DecortaskError,
    DuplicateTaskError,
    GraphError,
    GraphFailed,
    IllegalTransition,
    MessageError,
    PayloadTooLargeError,
    Retry,
    StoreError,
    TaskCancelled,
    TaskDefinitionError,
    TaskFailed,
    TaskNotDone,
    TaskNotFound,
    TaskStateConflict,
    UnknownTaskError,
    WaitTimeout,
)
from .events import Event, EventSubscriber
from .graph import Graph, GraphHandle, GraphStatus
from .handle import TaskHandle, TaskResult
from .late_results import ChildResult
from .middleware import ExecutionOutcome, Middleware
from .producer import Call
from .registry import registry
from .schedules import cron, every
from .states import TaskStatus
from .task import AsyncTask, Task, task

__version__ = "0.1.0"

__all__ = [
    # defining and calling tasks
    "AsyncTask",
    "Call",
    "Task",
    "TaskContext",
    "TaskHandle",
    "TaskResult",
    "TaskStatus",
    "get_task_context",
    "task",
    "task_log",
    # workflows (docs/workflows.md)
    "Chain",
    "ChildResult",
    "Chord",
    "Graph",
    "GraphHandle",
    "GraphStatus",
    "Group",
    "GroupHandle",
    "Signature",
    "WorkflowHandle",
    "chain",
    "chord",
    "group",
    "signature",
    # live events (docs/events.md)
    "Event",
    "EventSubscriber",
    # periodic tasks
    "cron",
    "every",
    # configuration
    "Decortask",
    "current_app",
    "registry",
    # middleware
    "ExecutionOutcome",
    "Middleware",
    # errors
    "ArgumentEncodingError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecortaskError",
    "DuplicateTaskError",
    "GraphError",
    "GraphFailed",
    "IllegalTransition",
    "MessageError",
    "PayloadTooLargeError",
    "Retry",
    "StoreError",
    "TaskCancelled",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskNotDone",
    "TaskNotFound",
    "TaskStateConflict",
    "UnknownTaskError",
    "WaitTimeout",
]
