"""Celery: `-P threads -c 8`, results off (its fastest configuration)."""

from __future__ import annotations

import os

from celery import Celery

from . import tracker

QUEUE = "bench_celery"
app = Celery("bench_celery", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(port: int = 0) -> None:
    tracker.work(port)


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.delay(0)


def probe(port: int) -> None:
    noop.delay(port)


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
