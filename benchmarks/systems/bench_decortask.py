"""decortask: `--pool threads -c 8`, default state store on (SQLite)."""

from __future__ import annotations

import os

from decortask import Decortask, task

from . import tracker

QUEUE = "bench_decortask"
app = Decortask(
    broker_url=os.environ["BENCH_BROKER"],
    store_url=os.environ["BENCH_STORE"],
    default_queue=QUEUE,
)


@task(name="bench.noop")
def noop(port: int = 0) -> None:
    tracker.work(port)


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.delay(0)


def enqueue_batch(n: int) -> None:
    noop.map([(0,)] * n)


def probe(port: int) -> None:
    noop.delay(port)


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
