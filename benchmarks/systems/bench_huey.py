"""Huey: `SqliteHuey` (results stored in the same file), consumer `-k thread -w 8`."""

from __future__ import annotations

import os

from huey import SqliteHuey

from . import tracker

huey = SqliteHuey("bench_huey", filename=os.environ["BENCH_SQLITE"])


@huey.task()
def noop(port: int = 0) -> None:
    tracker.work(port)


@huey.task()
def echo(i: int) -> int:
    return i


def enqueue(n: int) -> None:
    for _ in range(n):
        noop(0)


def flush() -> bool:
    """Huey enqueues inside the call: nothing is left to flush."""
    return True


def probe(port: int) -> None:
    noop(port)


def roundtrip(i: int) -> None:
    got = echo(i).get(blocking=True, timeout=30)
    if got != i:
        raise RuntimeError(f"echo({i}) returned {got!r}")


def worker_command() -> list[str]:
    return ["-m", "huey.bin.huey_consumer", "systems.bench_huey.huey", "-k", "thread", "-w", "8", "-q"]
