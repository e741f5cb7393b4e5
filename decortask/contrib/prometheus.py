"""Prometheus metrics with the official client (the `metrics` extra: `pip install 'decortask[metrics]'`).

Two views, listed in docs/metrics.md:

- `WorkerMetrics`: one worker process's own counters and histograms, fed once per settled delivery from
  `Worker.settle` (the one place that sees every outcome, dead letters and interruptions included), and
  served by `decortask worker --metrics-port` with prometheus_client's HTTP server thread.
- `StoreMetrics`: cluster-wide numbers read from the store and the broker (records by task, queue and
  state; workers alive; queue depth), for the dashboard's `/metrics`.

Gauges that need the store or the broker are computed when Prometheus scrapes, by a custom collector that
caches its answer for a few seconds, never per task. Labels never carry a task id, arguments or any other
value that grows without bound: a task name the worker has not registered is reported as `unregistered`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..deadletters import dead_letter_queue
from ..errors import ConfigurationError
from ..outcomes import Outcome, Reason, Settle
from ..security import mask_text
from ..states import TaskStatus
from ..store.base import TaskQuery

if TYPE_CHECKING:
    from ..app import Decortask
    from ..transport import Delivery

logger = logging.getLogger("decortask.metrics")

__all__ = ["CONTENT_TYPE_LATEST", "StoreMetrics", "WorkerMetrics", "serve_worker_metrics"]

#: Runtime buckets (seconds): sub-millisecond tasks up to hour-long ones.
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Wait buckets (seconds): from an idle worker's few milliseconds to a backlog of hours.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
#: How long a scrape-time answer (queue depth, workers alive, store counts) is reused.
WORKER_CACHE_SECONDS = 5.0
DASHBOARD_CACHE_SECONDS = 15.0
#: How many of the newest records the dashboard reads to learn which (task, queue) pairs to count.
PAIR_DISCOVERY = 5000
#: Label for a task name this process cannot vouch for (not registered), and for an unreadable message.
UNREGISTERED = "unregistered"
UNKNOWN = "unknown"
#: Outcomes of a delivery that changed nothing: the record already says what happened to the task.
_NO_CHANGE = frozenset(
    {
        Reason.DUPLICATE,
        Reason.STALE,
        Reason.UNEXPECTED_STATE,
        Reason.RUNNING_ELSEWHERE,
        Reason.DEFERRED,
        Reason.LOST_CLAIM,
        Reason.RATE_LIMITED,
        Reason.CONCURRENCY_LIMITED,
    }
)
#: A delivery parked by a task's limits (throttle.py): counted in decortask_task_throttled.
_THROTTLED = frozenset({Reason.RATE_LIMITED, Reason.CONCURRENCY_LIMITED})
_INTERRUPTIONS = frozenset({Reason.SHUTDOWN, Reason.WORKER_LOST})


class WorkerMetrics:
    """One worker's metrics: counters and histograms of what it settled, and scrape-time gauges.

    Args:
        app: the worker's app (registry for label checks, store and broker for the gauges).
        queues: the queues the worker consumes (their depth is reported).
        registry: where to register (default: a registry of its own, so two workers in one process or a
            test never collide with each other or with the application's metrics).
        cache_seconds: how long the store/broker gauges are reused between scrapes.
    """

    def __init__(
        self,
        app: Decortask,
        queues: Sequence[str],
        *,
        registry: CollectorRegistry | None = None,
        cache_seconds: float = WORKER_CACHE_SECONDS,
    ) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("task", "queue")
        self.tasks = Counter(
            "decortask_tasks",
            "Tasks this worker brought to a final state (SUCCESS, FAILED, CANCELLED, INTERRUPTED).",
            (*labels, "state"),
            registry=self.registry,
        )
        self.retries = Counter(
            "decortask_task_retries", "Failed attempts this worker scheduled a retry for.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.interruptions = Counter(
            "decortask_task_interruptions",
            "Attempts this worker settled as interrupted (final or requeued), by reason.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "decortask_dead_letters",
            "Messages this worker moved to a dead-letter queue, by reason.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.throttled = Counter(
            "decortask_task_throttled",
            "Deliveries parked in the schedule by a task's rate or concurrency limit, by limit.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.runtime = Histogram(
            "decortask_task_runtime_seconds",
            "Time an attempt held a pool slot: decode, claim, the task function, the outcome's store write.",
            labels,
            buckets=RUNTIME_BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "decortask_task_wait_seconds",
            "Queue latency of an attempt: its start minus its due time (eta) or, without one, its creation.",
            labels,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(
            ScrapeTimeCollector(lambda: worker_gauges(app, queues), cache_seconds=cache_seconds)
        )

    def settled(
        self, delivery: Delivery, outcome: Outcome, started_at: float | None, ended_at: float | None
    ) -> None:
        """Count one settled delivery (the worker calls this once per delivery, after ack or dead letter).

        Args:
            delivery: the delivery (its queue; its body is read for the task name and times only).
            outcome: what the worker settled.
            started_at: when the attempt was handed to a pool slot (UNIX seconds), if known.
            ended_at: when its outcome came back, if known.
        """
        queue = delivery.queue
        envelope = _envelope(delivery, self.app.settings.max_payload_bytes)
        task = self._task_label(outcome.task_name or envelope.get("task"), readable=bool(envelope))
        if outcome.settle is Settle.DEAD_LETTER:
            self.dead_letters.labels(task, queue, str(outcome.reason or UNKNOWN)).inc()
        if outcome.ran and started_at is not None and ended_at is not None:
            self.runtime.labels(task, queue).observe(max(0.0, ended_at - started_at))
            due = _number(envelope.get("eta")) or _number(envelope.get("created_at"))
            if due:
                self.wait.labels(task, queue).observe(max(0.0, started_at - due))
        if outcome.reason in _THROTTLED:
            self.throttled.labels(task, queue, str(outcome.reason)).inc()
        status = outcome.status
        if status is None or outcome.reason in _NO_CHANGE:
            return
        if outcome.reason in _INTERRUPTIONS:
            self.interruptions.labels(task, queue, str(outcome.reason)).inc()
        if status.terminal:
            self.tasks.labels(task, queue, status.value).inc()
        elif status is TaskStatus.RETRYING:
            self.retries.labels(task, queue).inc()

    def _task_label(self, name: Any, *, readable: bool) -> str:
        if isinstance(name, str) and name in self.app.registry:
            return name
        return UNREGISTERED if readable or name else UNKNOWN

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (what /metrics serves)."""
        return generate_latest(self.registry)


def serve_worker_metrics(
    app: Decortask, queues: Sequence[str], port: int, host: str = "127.0.0.1"
) -> Callable[[Delivery, Outcome, float | None, float | None], None]:
    """Serve a new `WorkerMetrics` at http://host:port/metrics from prometheus_client's own server thread
    (a daemon; `port` 0 picks a free one); returns the observer that feeds it (`Worker.observers`).

    Raises:
        ConfigurationError: the address cannot be bound (in use, not local).
    """
    metrics = WorkerMetrics(app, queues)
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); pick another --metrics-port"
        ) from None
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("decortask.worker").info("metrics: http://%s:%d/metrics", shown, bound_port)
    return metrics.settled


class StoreMetrics:
    """Cluster-wide gauges from the store and the broker, for the dashboard's `/metrics`.

    Args:
        app: the app whose store and broker to read.
        queues: queue names to report besides those the newest records were sent to.
        cache_seconds: how long one computation is reused (the counts cost a store query each).
    """

    def __init__(
        self, app: Decortask, queues: Iterable[str] = (), *, cache_seconds: float = DASHBOARD_CACHE_SECONDS
    ) -> None:
        self.registry = CollectorRegistry()
        configured = tuple(queues)
        self.registry.register(
            ScrapeTimeCollector(lambda: store_gauges(app, configured), cache_seconds=cache_seconds)
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ScrapeTimeCollector(Collector):
    """Runs `compute` when scraped, at most once per `cache_seconds`; a failure is logged, not raised."""

    def __init__(self, compute: Callable[[], list[Metric]], *, cache_seconds: float) -> None:
        self.compute = compute
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()  # concurrent scrapes compute once
        self._cached: list[Metric] = []
        self._at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.cache_seconds:
                try:
                    self._cached = self.compute()
                except Exception as exc:
                    # A scrape still answers with the process's counters; the gauges come back next time.
                    logger.warning("computing metrics from the store or broker failed (%s)", _problem(exc))
                    self._cached = []
                self._at = now
            return iter(list(self._cached))

    def describe(self) -> list[Metric]:
        # Registration must not run `compute` (it would reach the store before the worker is up).
        return []


def worker_gauges(app: Decortask, queues: Sequence[str]) -> list[Metric]:
    """Queue depth, dead letters and schedule size of `queues`, and the live workers (cluster-wide)."""
    return [*_queue_gauges(app, queues), _workers_alive(app)]


def store_gauges(app: Decortask, configured: Sequence[str]) -> list[Metric]:
    """Records by task, queue and state; the queues' depth; the live workers."""
    records = GaugeMetricFamily(
        "decortask_store_tasks",
        "Task records in the store by task, queue and state (cluster-wide; records expire after their TTL).",
        labels=("task", "queue", "state"),
    )
    pairs = {(r.name, r.queue) for r in app.store.list_tasks(TaskQuery(limit=PAIR_DISCOVERY))}
    for name, queue in sorted(pairs):
        for status in TaskStatus:
            count = app.store.count_tasks(TaskQuery(statuses=frozenset({status}), name=name, queue=queue))
            if count:
                records.add_metric((name, queue, status.value), count)
    queues = sorted({app.settings.default_queue, *configured, *(queue for _, queue in pairs)})
    return [records, *_queue_gauges(app, queues), _workers_alive(app)]


def _queue_gauges(app: Decortask, queues: Iterable[str]) -> list[Metric]:
    ready = GaugeMetricFamily(
        "decortask_queue_messages", "Messages ready in the broker queue (queue depth).", labels=("queue",)
    )
    dead = GaugeMetricFamily(
        "decortask_dead_letter_queue_messages",
        "Messages waiting in the queue's dead-letter queue (<queue>.dlq).",
        labels=("queue",),
    )
    scheduled = GaugeMetricFamily(
        "decortask_scheduled_tasks",
        "Delayed attempts (countdown, eta, retry delay) waiting in the store's schedule.",
        labels=("queue",),
    )
    for queue in queues:
        try:
            ready.add_metric((queue,), app.transport.queue_size(queue))
            dead.add_metric((queue,), app.transport.queue_size(dead_letter_queue(queue)))
        except Exception as exc:  # the store's numbers below still answer
            logger.warning("reading the depth of queue %s failed (%s)", queue, _problem(exc))
        scheduled.add_metric((queue,), app.store.count_schedule([queue]))
    return [ready, dead, scheduled]


def _workers_alive(app: Decortask) -> Metric:
    """Workers whose heartbeat is younger than `lease_timeout` (process-pool children, `id/pid`, excluded)."""
    now = time.time()
    alive = sum(
        1
        for worker_id, seen in app.store.heartbeats().items()
        if "/" not in worker_id and now - seen <= app.settings.lease_timeout
    )
    return GaugeMetricFamily(
        "decortask_workers_alive", "Workers with a heartbeat younger than lease_timeout.", value=alive
    )


def _envelope(delivery: Delivery, max_bytes: int) -> dict[str, Any]:
    """The envelope's top-level fields (task name and times are read; nothing else is kept), or {}."""
    if delivery.refused is not None or len(delivery.body) > max_bytes:
        return {}
    try:
        data = json.loads(delivery.body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _problem(exc: BaseException) -> str:
    return mask_text(str(exc)) or type(exc).__name__
