"""How a worker process writes its log: the one place that configures logging handlers.

`configure_logging` installs one handler on the root logger (stderr, or `--logfile`), formatted as text or
as JSON lines (`--log-format json`). Every line goes through `security.mask_text` at the handler, so a
secret in a user's own log message is masked like the worker's lines, and every line logged inside a
running task names that task: `[name id]` in text, `task_name`/`task_id` fields in JSON. The task comes
from `context.py`'s contextvar, read by a filter on the handler when the line is emitted, so the user's own
loggers get it too, in pool threads, in process-pool children and inside `async def` tasks.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any

from .context import current_task_context
from .errors import ConfigurationError
from .security import mask_text

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(decortask_task)s%(message)s"
#: A process-pool child's lines carry its pid, so lines of children running at once can be told apart.
CHILD_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(decortask_task)s%(message)s"

#: The id of the worker this process serves, named in JSON lines logged outside tasks too.
_worker_id: str | None = None
#: What `configure_logging` was last called with, handed to process-pool children.
_options: dict[str, Any] = {}


class TaskFieldsFilter(logging.Filter):
    """Adds the running task (if any) and the worker id to each record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_task_context()
        if ctx is None:
            record.decortask_task = ""
            record.task_name = None
            record.task_id = None
        else:
            # task_log() lines already start with "[name id]" (they did before this filter existed).
            already = getattr(record, "decortask_task_line", False)
            record.decortask_task = "" if already else f"[{ctx.name} {ctx.task_id}] "
            record.task_name = ctx.name
            record.task_id = ctx.task_id
        record.worker_id = _worker_id or (ctx.worker_id if ctx is not None else None)
        return True


class MaskingTextFormatter(logging.Formatter):
    """The usual text line with its message and traceback through the one sanitizer.

    Only what the line carries is masked, never the line's own fields: masking the whole line read a
    logger named `app.secret_tasks` followed by `: ` as `secret: value`, and masked the message's first word.
    """

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "decortask_task"):
            record.decortask_task = ""  # a handler without TaskFieldsFilter (a user's) may share the format
        if record.exc_text:  # formatted (unmasked) by another handler's formatter first
            record.exc_text = mask_text(record.exc_text)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = mask_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return mask_text(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return mask_text(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, worker_id, task_name/task_id inside a task."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_text(record.getMessage()),
            "worker_id": getattr(record, "worker_id", None),
            "pid": record.process,
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            entry["task_name"] = getattr(record, "task_name", None)
            entry["task_id"] = task_id
        if record.exc_info:
            entry["exception"] = mask_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = mask_text(record.exc_text)
        return json.dumps(entry, separators=(",", ":"), default=str)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def parse_level(level: str | int) -> int:
    """A level name (`info`, `DEBUG`) or number as a `logging` level; a clear error for an unknown name."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ConfigurationError(
            f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return value


def configure_logging(
    level: str | int = "INFO",
    *,
    logfile: str | None = None,
    log_format: str = "text",
    child: bool = False,
) -> logging.Handler:
    """Install the process's one log handler on the root logger (replacing one installed before).

    Args:
        level: the root level (`-l`).
        logfile: append to this file instead of stderr. A `WatchedFileHandler`, so `logrotate` may move
            the file away: the next line reopens the path.
        log_format: `text` (default) or `json` (one object per line).
        child: a process-pool child (text lines carry its pid).

    Returns:
        the handler installed.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(f"unknown log format {log_format!r}; use one of {', '.join(LOG_FORMATS)}")
    numeric = parse_level(level)
    handler: logging.Handler
    if logfile:
        try:
            handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot open the log file {logfile}: {exc.strerror or exc}") from None
    else:
        # The real stderr: never a stream that a task's output capture stands in for.
        handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.addFilter(TaskFieldsFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingTextFormatter(CHILD_TEXT_FORMAT if child else TEXT_FORMAT))
    handler.set_name("decortask")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "decortask"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    _options.clear()
    _options.update(
        level=numeric, logfile=os.path.abspath(logfile) if logfile else None, log_format=log_format
    )
    return handler


def child_options() -> dict[str, Any]:
    """What a process-pool child passes to `configure_logging` to log like its parent."""
    return dict(_options)


def set_worker_id(worker_id: str | None) -> None:
    """Name the worker this process serves in every JSON line (`worker_id`)."""
    global _worker_id
    _worker_id = worker_id
