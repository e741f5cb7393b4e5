"""Workflows: a chain, a group, a chord and nested ones, run by a worker until the queue is empty.

Run from the repository root: `python -m examples.workflows`. With nothing configured, the broker and the
store are one SQLite file (`decortask.db`), so no server is needed.
"""

from __future__ import annotations

import subprocess
import sys

from decortask import TaskFailed, chain, chord, group, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def multiply(a: int, b: int) -> int:
    return a * b


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def check_positive(n: int) -> int:
    if n <= 0:
        raise ValueError(f"{n} is not positive")
    return n


def main() -> int:
    # (2 + 3) * 10, then + 1: each step gets the previous result as its first argument.
    steps = (add.s(2, 3) | multiply.s(10) | add.s(1)).apply_async()
    # add.si(...) ignores the previous result; a failing step stops the chain and names itself.
    stops = chain(add.s(1, -5), check_positive.s(), add.si(100, 100)).apply_async()
    squares = group(multiply.s(n, n) for n in range(1, 6)).apply_async()
    summed = chord([multiply.s(n, n) for n in range(1, 6)], total.s()).apply_async()
    # Nesting: a group inside a chain gets the previous result and gives the next step the list.
    fanned = (add.s(1, 1) | group(multiply.s(10), multiply.s(100)) | total.s()).apply_async()
    # Chains as a chord's header members, and a chain as its callback.
    nested = chord([add.s(n, n) | multiply.s(10) for n in range(1, 4)], total.s() | add.s(1)).apply_async()
    print("enqueued chains, a group, chords and nested ones; starting a worker until the queue is empty")
    worker = [
        sys.executable,
        "-m",
        "decortask",
        "worker",
        "-A",
        "examples.workflows",
        "--burst",
        "-l",
        "ERROR",
    ]
    subprocess.run(worker, check=True)
    print(f"chain: {steps.get(timeout=10)}")
    try:
        stops.get(timeout=10)
    except TaskFailed as exc:
        print(f"failing chain: {exc.error_message}")
    print(f"group: {squares.get(timeout=10)}")
    print(f"chord: {summed.get(timeout=10)}")
    print(f"group in a chain: {fanned.get(timeout=10)}")  # 2 -> [20, 200] -> 220
    print(f"chains in a chord: {nested.get(timeout=10)}")  # [20, 40, 60] -> 120 -> 121
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
