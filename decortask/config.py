"""Settings: from keyword arguments, then `DECORTASK_*` environment variables, then defaults."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .security import check_keys

DEFAULT_URL = "sqlite:///decortask.db"
ENV_PREFIX = "DECORTASK_"
#: `DECORTASK_*` variables that are not settings and are read elsewhere: the dashboard's `--token`
#: (cli.py) and the SQLite store's busy timeout (store/sqlite.py). `DECORTASK_TEST_*` belong to test suites.
OTHER_ENV_VARIABLES = frozenset({"DECORTASK_DASHBOARD_TOKEN", "DECORTASK_SQLITE_BUSY_TIMEOUT"})
TEST_ENV_PREFIX = "DECORTASK_TEST_"
#: The `queue_type` values: decortask's choice for new queues (`auto`), or a type every queue must have.
AUTO_QUEUE_TYPE = "auto"
QUEUE_TYPES = (AUTO_QUEUE_TYPE, "classic", "quorum")
#: Every queue `Q` has a dead-letter queue `Q.dlq` (DESIGN §4).
DEAD_LETTER_SUFFIX = ".dlq"

logger = logging.getLogger("decortask.config")
#: Misspelled variables already warned about: each is named once per process, however many apps load.
_warned_env_names: set[str] = set()


@dataclass(frozen=True)
class Settings:
    """Everything an app can be configured with. Times are seconds.

    Attributes:
        broker_url: where messages go (`amqp://`, `redis://`, `sqlite:///file.db`, `memory://`).
        store_url: where task records live (`sqlite:///file.db`, `redis://`, `memory://`).
        default_queue: queue for tasks that name none.
        result_ttl: how long records of `persist=False` tasks are kept after they end.
        history_ttl: how long records of persistent tasks are kept after they end.
        max_payload_bytes: largest encoded message accepted at `.delay()` and on receipt.
        confirm_timeout: how long a publish waits for the broker's confirm (AMQP).
        publish_retries: how many times a failed publish is retried before `BrokerUnavailable`.
        lease_timeout: a worker whose heartbeat is older than this is dead; its RUNNING tasks count as
            interrupted (DESIGN §2 receipt rules).
        liveness_probe: whether workers hold their identity on a broker connection (an exclusive queue on
            RabbitMQ, a client name on Redis, a file lock beside the embedded broker's database), so that a
            killed worker is known dead within about a second instead of `lease_timeout`; heartbeats stay
            the fallback either way. `DECORTASK_LIVENESS_PROBE=0` turns it off. docs/reliability.md.
        sqlite_lease: seconds a delivered-but-unacked message on the embedded broker stays invisible
            without its worker renewing the lease (a killed worker's messages come back after it).
            Must be longer than `lease_timeout`, so a message comes back only once its owner counts as dead.
        scheduler_interval: how often a worker looks for due delayed work.
        cancel_grace: after a running task is asked to cancel (`should_stop()` turns true), how long it may
            take to stop by itself before it is stopped by force.
        cancel_poll_interval: how often a worker reads the store for cancel requests of its running tasks.
            On RabbitMQ and Redis a cancel is also broadcast to every worker at once (control exchange);
            the poll is what the embedded broker relies on, and the fallback if a broadcast is missed.
        timeout_grace: after a task reaches its `timeout`, how long it may take to stop by itself before it
            is stopped by force.
        redis_visibility_timeout: Redis broker: seconds after which kombu hands an unacked message out again.
            Long tasks are safe either way (a second delivery of a running task is parked, never run), and
            killed workers are recovered by the reaper long before this.
        max_deliveries: how many times one attempt may be taken up by a worker that then died, before the
            task ends FAILED (max_deliveries) and is dead-lettered; a task's own option overrides it.
        shutdown_grace: after SIGTERM/SIGINT, how long running tasks may take to finish before they are
            interrupted (`decortask worker --grace` overrides it).
        prefetch_multiplier: messages a worker holds per pool slot.
        encryption_keys: comma-separated Fernet keys, newest first; when set, task arguments travel
            encrypted (needs the `crypto` extra). Empty: encryption off. Never shown in a repr.
        accept_plaintext: with `encryption_keys` set, whether a worker still runs messages whose arguments
            are not encrypted (e.g. while producers are being switched over); otherwise they are refused.
        periodic: whether this process's workers take part in running periodic schedules (any of them may
            lead a schedule); `DECORTASK_PERIODIC=0` keeps a worker out. See docs/periodic.md.
        capture_output: whether a worker stores a running task's `print()` output and its own logging
            lines with the task (its log, bounded per attempt); `DECORTASK_CAPTURE_OUTPUT=0` turns it off.
        events: whether this process's writes append to the store's event feed, which subscribers in any
            process read (`EventSubscriber`, `decortask events`, the dashboard); off by default, like Celery's
            -E. Turn it on for the producers and the workers (`decortask worker --events`). docs/events.md.
        events_max: how many events the feed keeps; a subscriber further behind gets a gap event.
        relay_interval: how often a worker's outbox relay (one worker at a time, under a store lease) looks
            for tasks whose message needs publishing; see docs/reliability.md.
        relay_after: a task recorded by `.delay()` this long ago whose message no publisher confirmed (its
            producer died, the broker was down) is published by the relay.
        republish_after: a PENDING task whose message was published this long ago and never consumed is
            published again by the relay (a broker that lost it, e.g. Redis restarted without persistence),
            at most once per this period, unless its queue holds at least as many waiting messages.
        publisher_delay: seconds the background publisher waits before each batch (tests: a producer
            killed "before its publisher ran"); 0 in production.
        events: whether this process's writes append to the store's event feed, which subscribers in any
            process read (`EventSubscriber`, `decortask events`, the dashboard); off by default, like Celery's
            -E. Turn it on for the producers and the workers (`decortask worker --events`). docs/events.md.
        events_max: how many events the feed keeps; a subscriber further behind gets a gap event.
        log_flush_interval: most seconds a running task's log lines (`task_log()`, captured output) wait
            in the worker before they are written; they also ride with the task's next state write. A
            worker that crashes loses at most this much of a task's log.
        schedules: periodic schedules of tasks of any package, as a JSON object (text) or a mapping:
            name -> {"task": ..., "cron": ... or "every": seconds, "args": ..., ...}; see docs/periodic.md.
        queue_type: RabbitMQ type of the task queues decortask declares: `classic` (priorities 0..9),
            `quorum` (replicated; a broker-side delivery limit dead-letters to `<queue>.dlq`), or `auto`
            (default): classic, but a queue that already exists as a quorum queue is used as it is.
            Other brokers ignore it. See docs/configuration.md.
        queue_types: per-queue `queue_type`, as a mapping or text (`billing=quorum,emails=classic`); a
            queue not named here has `queue_type`. `<queue>.dlq` has the type of its queue.
    """

    broker_url: str = DEFAULT_URL
    store_url: str = DEFAULT_URL
    default_queue: str = "default"
    result_ttl: float = 3600.0
    history_ttl: float = 7 * 24 * 3600.0
    max_payload_bytes: int = 1024 * 1024
    confirm_timeout: float = 10.0
    publish_retries: int = 3
    lease_timeout: float = 20.0
    sqlite_lease: float = 40.0
    liveness_probe: bool = True
    scheduler_interval: float = 0.2
    shutdown_grace: float = 30.0
    cancel_grace: float = 10.0
    cancel_poll_interval: float = 0.5
    timeout_grace: float = 2.0
    redis_visibility_timeout: float = 3600.0
    max_deliveries: int = 5
    prefetch_multiplier: int = 1
    # repr=False: settings get printed and logged; the keys must never be.
    encryption_keys: str = field(default="", repr=False)
    accept_plaintext: bool = False
    periodic: bool = True
    capture_output: bool = True
    events: bool = False
    events_max: int = 100_000
    relay_interval: float = 2.0
    relay_after: float = 5.0
    republish_after: float = 300.0
    publisher_delay: float = 0.0
    log_flush_interval: float = 0.5
    schedules: str | Mapping[str, Any] = ""
    queue_type: str = AUTO_QUEUE_TYPE
    queue_types: str | Mapping[str, str] = ""

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings: explicit `overrides` win over `DECORTASK_*` variables, which win over defaults."""
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        warn_misspelled_env(env, known)
        values: dict[str, Any] = {}
        for name, spec in known.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, spec.type, raw)
        for name, value in (overrides or {}).items():
            if name not in known:
                raise ConfigurationError(
                    f"unknown setting {name!r}; known settings: {', '.join(sorted(known))}"
                )
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in (
            "result_ttl",
            "history_ttl",
            "confirm_timeout",
            "lease_timeout",
            "sqlite_lease",
            "scheduler_interval",
            "cancel_poll_interval",
            "relay_interval",
            "relay_after",
            "republish_after",
            "log_flush_interval",
        ):
            if float(getattr(self, name)) <= 0:
                raise ConfigurationError(f"setting {name} must be > 0, got {getattr(self, name)!r}")
        if self.broker_url.lower().startswith("sqlite:") and self.sqlite_lease <= self.lease_timeout:
            raise ConfigurationError(
                f"setting sqlite_lease ({self.sqlite_lease}) must be longer than lease_timeout "
                f"({self.lease_timeout}): a message may only come back once its worker counts as dead"
            )
        if self.max_deliveries < 1:
            raise ConfigurationError(f"setting max_deliveries must be >= 1, got {self.max_deliveries!r}")
        if self.cancel_grace < 0 or self.timeout_grace < 0:
            raise ConfigurationError("settings cancel_grace and timeout_grace must be >= 0")
        if self.publisher_delay < 0:
            raise ConfigurationError(f"setting publisher_delay must be >= 0, got {self.publisher_delay!r}")
        if self.shutdown_grace < 0:
            raise ConfigurationError(f"setting shutdown_grace must be >= 0, got {self.shutdown_grace!r}")
        if self.max_payload_bytes < 1024:
            raise ConfigurationError("setting max_payload_bytes must be at least 1024")
        if self.prefetch_multiplier < 1:
            raise ConfigurationError("setting prefetch_multiplier must be >= 1")
        if not self.default_queue:
            raise ConfigurationError("setting default_queue must not be empty")
        if not isinstance(self.encryption_keys, str):
            raise ConfigurationError(
                "setting encryption_keys must be a string of comma-separated Fernet keys"
            )
        if not isinstance(self.accept_plaintext, bool):
            raise ConfigurationError("setting accept_plaintext must be True or False")
        check_keys(self.encryption_keys)
        if int(self.events_max) < 1:
            raise ConfigurationError(f"setting events_max must be >= 1, got {self.events_max!r}")
        if not isinstance(self.periodic, bool):
            raise ConfigurationError("setting periodic must be True or False")
        from .periodic_config import entries_from_setting

        entries_from_setting(self.schedules)  # a malformed schedule is reported at start, not at its slot
        _check_queue_type("queue_type", self.queue_type)
        queue_types_from_setting(self.queue_types)

    def queue_type_for(self, queue: str) -> str:
        """The `queue_type` of `queue` (`auto`, `classic` or `quorum`); `<queue>.dlq` has its queue's."""
        base = queue[: -len(DEAD_LETTER_SUFFIX)] if queue.endswith(DEAD_LETTER_SUFFIX) else queue
        return queue_types_from_setting(self.queue_types).get(base, self.queue_type)

    def __repr__(self) -> str:
        # Settings get printed and logged: URLs appear with their passwords masked, keys not at all.
        from .security import mask_url

        shown = []
        for spec in fields(self):
            if not spec.repr:
                continue
            value = getattr(self, spec.name)
            if spec.name.endswith("_url"):
                value = mask_url(value)
            shown.append(f"{spec.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def warn_misspelled_env(env: Mapping[str, str], settings: Collection[str]) -> None:
    """Warn about `DECORTASK_*` variables that are no setting but close to one (`DECORTASK_BROKR_URL`).

    Such a variable is ignored, so the app quietly runs on a default (the local SQLite file) instead of the
    broker the user meant. Each is named once per process, with the setting it most resembles.

    Args:
        env: the environment variables.
        settings: the `Settings` field names (the variables' names are derived from them).
    """
    for name in env:
        if (
            not name.startswith(ENV_PREFIX)
            or name in _warned_env_names
            or name in OTHER_ENV_VARIABLES
            or name.startswith(TEST_ENV_PREFIX)
        ):
            continue
        spelled = name[len(ENV_PREFIX) :].lower()
        if spelled in settings and name == ENV_PREFIX + spelled.upper():
            continue
        closest = difflib.get_close_matches(spelled, list(settings), n=1)
        if not closest:
            continue  # not like any setting: someone else's variable
        _warned_env_names.add(name)
        logger.warning(
            "environment variable %s is not a decortask setting and is ignored; did you mean %s%s?",
            name,
            ENV_PREFIX,
            closest[0].upper(),
        )


_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _coerce(name: str, kind: Any, raw: str, where: str | None = None) -> Any:
    """`raw` as the field's type; `where` names the source in the error (default: the environment variable)."""
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "float":
            return float(raw)
        if kind_name == "int":
            return int(raw)
        if kind_name == "bool":
            return _BOOLEANS[raw.strip().lower()]
    except (ValueError, KeyError):
        source = where or f"environment variable {ENV_PREFIX}{name.upper()}"
        raise ConfigurationError(f"{source}={raw!r} is not a valid {kind_name}") from None
    return raw


def settings_from_config(
    source: str, nested: Mapping[str, Any] | None, prefixed: Mapping[str, Any]
) -> dict[str, Any]:
    """`Settings` fields from a framework's configuration (Django settings, Flask `app.config`).

    Both spellings work: a `DECORTASK` mapping of field names (`{"broker_url": ...}`, any case) and
    `DECORTASK_<FIELD>` entries. Strings for numbers and flags are parsed as in the environment.

    Args:
        source: how the user calls that configuration, for errors ("Django settings", "app.config").
        nested: the `DECORTASK` mapping, if configured.
        prefixed: the configuration's `DECORTASK_*` entries (other keys are ignored).

    Raises:
        ConfigurationError: an unknown key (the error lists the known ones), one setting given both ways
            with different values, or a value that does not parse.
    """
    known = {f.name: f for f in fields(Settings)}
    known_list = ", ".join(sorted(known))
    found: dict[str, tuple[str, Any]] = {}  # field -> (how the user spelled it, value)
    if nested is not None and not isinstance(nested, Mapping):
        raise ConfigurationError(
            f"{source}: DECORTASK must be a dict of settings, got {type(nested).__name__}"
        )
    entries = [(f"DECORTASK[{key!r}]", str(key).lower(), value) for key, value in (nested or {}).items()]
    entries += [
        (key, key[len(ENV_PREFIX) :].lower(), value)
        for key, value in prefixed.items()
        if key.startswith(ENV_PREFIX)
    ]
    for spelled, name, value in entries:
        if name not in known:
            raise ConfigurationError(
                f"{source}: unknown decortask setting {spelled}; known settings: {known_list}"
            )
        if isinstance(value, str) and known[name].type not in ("str", str):
            value = _coerce(name, known[name].type, value, where=f"{source} {spelled}")
        if name in found and found[name][1] != value:
            raise ConfigurationError(
                f"{source}: {found[name][0]} and {spelled} both set {name} to different values; keep one"
            )
        found[name] = (spelled, value)
    return {name: value for name, (_, value) in found.items()}


def _check_queue_type(where: str, value: object) -> None:
    if value not in QUEUE_TYPES:
        raise ConfigurationError(f"setting {where} must be one of {', '.join(QUEUE_TYPES)}, got {value!r}")


def queue_types_from_setting(value: str | Mapping[str, str]) -> dict[str, str]:
    """The `queue_types` setting as {queue: type}, from a mapping or `billing=quorum,emails=classic` text.

    Raises:
        ConfigurationError: an entry is not `queue=type`, or names a type that is not one of `QUEUE_TYPES`.
    """
    if isinstance(value, Mapping):
        pairs = [(str(queue), str(kind)) for queue, kind in value.items()]
    elif isinstance(value, str):
        pairs = []
        for entry in filter(None, (part.strip() for part in value.split(","))):
            queue, sep, kind = entry.partition("=")
            if not sep or not queue.strip():
                raise ConfigurationError(
                    f"setting queue_types: {entry!r} is not queue=type; write e.g. billing=quorum,emails=classic"
                )
            pairs.append((queue.strip(), kind.strip()))
    else:
        raise ConfigurationError(f"setting queue_types must be a mapping or text, got {type(value).__name__}")
    for queue, kind in pairs:
        _check_queue_type(f"queue_types[{queue!r}]", kind)
    return dict(pairs)


def sqlite_path(url: str) -> Path:
    """The file a `sqlite://` URL names, SQLAlchemy style.

    `sqlite:///rel/path.db` is relative to the working directory, `sqlite:////abs/path.db` is absolute.
    """
    prefix = "sqlite://"
    if not url.lower().startswith(prefix):
        raise ConfigurationError(f"{url!r} is not a sqlite:// URL")
    rest = url[len(prefix) :].split("?", 1)[0]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"sqlite URL {url!r} names no file: write sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    return Path(rest[1:]).expanduser()
