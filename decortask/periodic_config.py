"""Which periodic schedules exist: `@task(schedule=...)` and the `schedules` setting, as `PeriodicEntry`s.

The setting names schedules for tasks of any package (Django or Flask settings, `DECORTASK_SCHEDULES`
JSON), each with its own arguments::

    DECORTASK_SCHEDULES='{"nightly-report": {"task": "reports.tasks.nightly", "cron": "0 3 * * *",
                          "tz": "Europe/Paris", "kwargs": {"full": true}},
                          "poll-feeds": {"task": "feeds.tasks.poll", "every": 30, "queue": "feeds"}}'

Keys of one schedule: `task` (required), one of `cron` (expression) or `every` (seconds), `tz`, `missed`,
`grace`, `args` (list), `kwargs` (object), `queue`; in Python settings also `schedule` (a `cron()` or
`every()` object) instead of `cron`/`every`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .schedules import Schedule, cron, every

if TYPE_CHECKING:
    from .app import Decortask

_KEYS = ("task", "cron", "every", "schedule", "tz", "missed", "grace", "args", "kwargs", "queue")


@dataclass(frozen=True)
class PeriodicEntry:
    """One named schedule: call `task` with `args`/`kwargs` at every slot of `schedule`.

    Attributes:
        name: unique among schedules; a decorated task's schedule is named after the task.
        queue: where its slots are published (default: the task's queue, else the default queue).
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None


def declared_entries(app: Decortask) -> list[PeriodicEntry]:
    """Every schedule of `app`: its registered tasks' `schedule=` options, then its `schedules` setting.

    Raises:
        ConfigurationError: a malformed setting, or two schedules with one name.
    """
    entries = [
        PeriodicEntry(task.name, task.name, task.options.schedule)
        for task in (app.registry.get(name) for name in app.registry.names())
        if task.options.schedule is not None
    ]
    entries += entries_from_setting(app.settings.schedules)
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ConfigurationError(
                f"two schedules are named {entry.name!r} (a task's schedule= option is named after the task); "
                "rename the one in the schedules setting"
            )
        seen.add(entry.name)
    return entries


def entries_from_setting(raw: str | Mapping[str, Any]) -> list[PeriodicEntry]:
    """The schedules of the `schedules` setting: a JSON object (text) or a mapping, name -> schedule."""
    if isinstance(raw, str):
        if not raw.strip():
            return []
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ConfigurationError(f"setting schedules is not valid JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ConfigurationError("setting schedules must be an object mapping schedule names to schedules")
    return [_entry(str(name), spec) for name, spec in raw.items()]


def _entry(name: str, spec: Any) -> PeriodicEntry:
    where = f"setting schedules[{name!r}]"
    if not name.strip():
        raise ConfigurationError("setting schedules: a schedule name must not be empty")
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where} must be an object with at least task and cron or every")
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where} needs task: the registered name of the task to run")
    given = [key for key in ("cron", "every", "schedule") if key in spec]
    if len(given) != 1:
        raise ConfigurationError(f"{where} needs exactly one of cron (an expression) or every (seconds)")
    options = {key: spec[key] for key in ("missed", "grace") if key in spec}
    try:
        if "schedule" in spec:
            schedule = spec["schedule"]
            if not isinstance(schedule, Schedule) or options or "tz" in spec:
                raise ConfigurationError(
                    "schedule must be a cron() or every() object, with no tz/missed/grace"
                )
        elif "cron" in spec:
            schedule = cron(spec["cron"], tz=spec.get("tz", "UTC"), **options)
        else:
            if "tz" in spec:
                raise ConfigurationError("tz applies to cron schedules only")
            seconds = spec["every"]
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise ConfigurationError(f"every must be a number of seconds, got {seconds!r}")
            schedule = every(seconds, **options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    args, kwargs, queue = spec.get("args", []), spec.get("kwargs", {}), spec.get("queue")
    if not isinstance(args, (list, tuple)):
        raise ConfigurationError(f"{where}: args must be a list")
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise ConfigurationError(f"{where}: kwargs must be an object with string keys")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigurationError(f"{where}: queue must be a non-empty string")
    return PeriodicEntry(name, task, schedule, tuple(args), dict(kwargs), queue)
