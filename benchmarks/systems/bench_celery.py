"""Celery: `-P threads -c 8`, results off (its fastest configuration) except for the round trip.

With `BENCH_RESULTS` set (the round-trip measure only), the app has a Redis result backend
(`BENCH_RESULTS_URL`) and `echo` stores its result, so the client waits with `.delay(i).get()`.
"""

from __future__ import annotations

import os

from celery import Celery

from . import tracker

QUEUE = os.environ.get("BENCH_QUEUE_PREFIX", "bench_") + "celery"  # run.py: unique per run
RESULTS = bool(os.environ.get("BENCH_RESULTS"))
app = Celery("bench_celery", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if RESULTS:
    app.conf.result_backend = os.environ["BENCH_RESULTS_URL"]


@app.task(name="bench.noop")
def noop(port: int = 0) -> None:
    tracker.work(port)


@app.task(name="bench.echo", ignore_result=not RESULTS)
def echo(i: int) -> int:
    return i


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.delay(0)


def flush() -> bool:
    """Celery publishes inside `.delay()`: nothing is left to flush."""
    return True


def probe(port: int) -> None:
    noop.delay(port)


def roundtrip(i: int) -> None:
    got = echo.delay(i).get(timeout=30)
    if got != i:
        raise RuntimeError(f"echo({i}) returned {got!r}")


def worker_command() -> list[str]:
    return [
        "-m",
        "celery",
        "-A",
        "systems.bench_celery",
        "worker",
        "-P",
        "threads",
        "-c",
        "8",
        "-Q",
        QUEUE,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
    ]
