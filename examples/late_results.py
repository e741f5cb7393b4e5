"""Late results: a task starts children in the background, merges those that end while it runs, and
names a follow-up for those that end after it.

Run from the repository root: `python -m examples.late_results`. With nothing configured, the broker and
the store are one SQLite file (`decortask.db`), so no server is needed.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from decortask import ChildResult, TaskContext, TaskHandle, current_app, task
from decortask.canvas import derived_id

PRICES = {"north": 12, "south": 9, "east": 15}


@task
def quote(shop: str) -> list[Any]:
    return [shop, PRICES[shop]]


@task
def restock(shop: str) -> str:
    return f"{shop} restocked"


@task
def late_report(late: dict[str, Any], what: str) -> str:
    """The wake-up follow-up: gets a late child's result (`ChildResult.to_dict()`) first."""
    child = ChildResult.from_dict(late)
    return f"{what}: {child.status.value} -> {child.result}"


@task
def cheapest(ctx: TaskContext, shops: list[str]) -> str:
    for shop in shops:
        ctx.spawn(quote.s(shop), on_late=late_report.s("a quote"))
    offers = dict(child.result for child in ctx.results(timeout=60) if child.ok)  # hot merge
    best = min(offers, key=offers.__getitem__)
    # Not waited for: its result arrives after this task ended and wakes `late_report`.
    ctx.spawn(restock.s(best), on_late=late_report.s("restock"))
    return f"{best} at {offers[best]}"


def main() -> int:
    handle = cheapest.delay(sorted(PRICES))
    print("enqueued; starting a worker until the queue is empty")
    worker = [sys.executable, "-m", "decortask", "worker", "-A", "examples.late_results", "-c", "4"]
    subprocess.run([*worker, "--burst", "-l", "ERROR"], check=True)
    print(f"cheapest: {handle.get(timeout=10)}")
    restocked = derived_id(handle.id, f"spawn:{len(PRICES)}")  # its fourth child: the restock
    followup = TaskHandle(current_app(), derived_id(restocked, "late"), late_report.name)
    print(f"late result: {followup.get(timeout=10)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
