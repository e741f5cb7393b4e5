"""Quickstart: enqueue a few tasks, run a worker until the queue is empty, print the results.

Run from the repository root: `python -m examples.quickstart`. With nothing configured, the broker and the
store are one SQLite file (`decortask.db`), so no server is needed.
"""

from __future__ import annotations

import subprocess
import sys

from decortask import TaskContext, task, task_log


@task
def add(a: int, b: int) -> int:
    return a + b


@task(retries=2, delay=0.2, backoff=2.0)
def count_words(ctx: TaskContext, text: str) -> int:
    """Counts words; fails on its first attempt to show a retry."""
    task_log("counting words", chars=len(text))
    if ctx.attempt == 1:
        raise ConnectionError("pretend the first try hit a flaky service")
    ctx.set_progress(1.0, "done")
    return len(text.split())


def main() -> int:
    handles = [add.delay(n, n * 10) for n in range(1, 4)]
    words = count_words.delay("as easy as a decorator, as reliable as the broker allows")
    print(f"enqueued {len(handles) + 1} tasks; starting a worker that exits when the queue is empty")
    worker = [
        sys.executable,
        "-m",
        "decortask",
        "worker",
        "-A",
        "examples.quickstart",
        "--burst",
        "-l",
        "WARNING",
    ]
    subprocess.run(worker, check=True)
    for handle in handles:
        print(f"{handle.name}: {handle.status} -> {handle.get(timeout=10)}")
    print(f"{words.name}: {words.status} after {words.attempts} attempts -> {words.get(timeout=10)}")
    print("logs:", [line.message for line in words.logs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
