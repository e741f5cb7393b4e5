"""The global task registry: names to tasks, filled at import time by `@task`."""

from __future__ import annotations

import difflib
import threading
from typing import TYPE_CHECKING, Any

from .errors import DuplicateTaskError, UnknownTaskError

if TYPE_CHECKING:
    from .task import Task


class Registry:
    """Maps task names to `Task` objects. Lookups never import anything."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._lock = threading.Lock()

    def register(self, task: Task[Any, Any]) -> None:
        with self._lock:
            existing = self._tasks.get(task.name)
            if existing is not None and existing.fn is not task.fn:
                if _same_definition(existing, task):
                    # The same module imported twice (e.g. as __main__ and by name): keep the newest.
                    self._tasks[task.name] = task
                    return
                raise DuplicateTaskError(
                    f"a task named {task.name!r} is already registered (from {existing.fn.__module__}); "
                    "give one of them another name with @task(name=...)"
                )
            self._tasks[task.name] = task

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tasks.pop(name, None)

    def get(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(self.unknown_message(name)) from None

    def find(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._tasks), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"no task named {name!r} is registered{hint} "
            "(start the worker with -A naming the module that defines it)"
        )

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)


def _same_definition(a: Task[Any, Any], b: Task[Any, Any]) -> bool:
    code_a, code_b = getattr(a.fn, "__code__", None), getattr(b.fn, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )


#: The process-wide registry `@task` writes to.
registry = Registry()
