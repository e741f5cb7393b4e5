"""Huey: `SqliteHuey`, consumer `-k thread -w 8`."""

from __future__ import annotations

import os

from huey import SqliteHuey

from . import tracker

huey = SqliteHuey("bench_huey", filename=os.environ["BENCH_SQLITE"])


@huey.task()
def noop(port: int = 0) -> None:
    tracker.work(port)


def enqueue(n: int) -> None:
    for _ in range(n):
        noop(0)


def probe(port: int) -> None:
    noop(port)


def worker_command() -> list[str]:
    return ["-m", "huey.bin.huey_consumer", "systems.bench_huey.huey", "-k", "thread", "-w", "8", "-q"]
