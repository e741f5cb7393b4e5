"""decortask: `--pool threads -c 8`, its default state store on (SQLite) unless `BENCH_STORE` says otherwise.

`BENCH_TASK` picks what `enqueue` sends: `noop` (the shared no-op), `transient` (the same no-op declared
`@task(persist=False)`) or `log3` (the no-op after three `task_log` lines).
"""

from __future__ import annotations

import os

from decortask import Decortask, task, task_log

from . import tracker

QUEUE = os.environ.get("BENCH_QUEUE_PREFIX", "bench_") + "decortask"  # run.py: unique per run
app = Decortask(
    broker_url=os.environ["BENCH_BROKER"],
    store_url=os.environ["BENCH_STORE"],
    default_queue=QUEUE,
)


@task(name="bench.noop")
def noop(port: int = 0) -> None:
    tracker.work(port)


@task(name="bench.noop_transient", persist=False)
def noop_transient(port: int = 0) -> None:
    tracker.work(port)


@task(name="bench.log3")
def log3(port: int = 0) -> None:
    for step in ("fetched", "processed", "stored"):
        task_log(f"step {step}", port=port)
    tracker.work(port)


@task(name="bench.echo")
def echo(i: int) -> int:
    return i


TASKS = {"noop": noop, "transient": noop_transient, "log3": log3}
selected = TASKS[os.environ.get("BENCH_TASK", "noop")]


def enqueue(n: int) -> None:
    for _ in range(n):
        selected.delay(0)


def enqueue_batch(n: int) -> None:
    selected.map([(0,)] * n)


def flush() -> bool:
    """Wait until the background publisher (the outbox) has every message `.delay()` handed it published
    and confirmed; False if that took over a minute. An app without one published inside `.delay()`."""
    flush_published = getattr(app, "flush_published", None)  # absent before the outbox (--source)
    return True if flush_published is None else bool(flush_published(60.0))


def probe(port: int) -> None:
    noop.delay(port)


def roundtrip(i: int) -> None:
    """One round trip the way users wait for a result."""
    got = echo.delay(i).get(timeout=30)
    if got != i:
        raise RuntimeError(f"echo({i}) returned {got!r}")


def worker_command() -> list[str]:
    return [
        "-m",
        "decortask",
        "worker",
        "-A",
        "systems.bench_decortask:app",
        "--pool",
        "threads",
        "-c",
        "8",
        "-Q",
        QUEUE,
        "-l",
        "WARNING",
    ]
