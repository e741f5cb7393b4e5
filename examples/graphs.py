"""Graphs: named tasks with dependencies, results passed by name, and a finally node that runs anyway.

Run from the repository root: `python -m examples.graphs`. With nothing configured, the broker and the
store are one SQLite file (`decortask.db`), so no server is needed.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from decortask import Graph, GraphFailed, task


@task
def download(url: str) -> str:
    return f"<html>{url} says hello world</html>"


@task
def count_words(download: str) -> int:
    """Gets the node `download`'s result as its keyword argument `download`."""
    return len(download.split())


@task
def find_title(download: str) -> str:
    if "title" not in download:
        raise ValueError("the page has no title")
    return download


@task
def summary(count_words: int, find_title: str | None = None) -> str:
    """`find_title` is an optional dependency: None when it did not succeed."""
    return f"{count_words} words, title: {find_title or 'none'}"


@task
def report(**results: Any) -> str:
    """A finally node: runs after every other node, whatever happened; gets what succeeded."""
    return ", ".join(
        f"{name}={'ok' if value is not None else 'no result'}" for name, value in results.items()
    )


def pipeline(url: str, *, title_required: bool) -> Graph:
    g = Graph()
    g.add("download", download.s(url))
    g.add("count_words", count_words.s(), requires=["download"])
    g.add("find_title", find_title.s(), requires=["download"])
    if title_required:
        g.add("summary", summary.s(), requires=["count_words", "find_title"])
    else:
        g.add("summary", summary.s(), requires=["count_words"], optional=["find_title"])
    g.add_finally("report", report.s())  # after every node added before it
    return g


def main() -> int:
    tolerant = pipeline("https://example.com", title_required=False).apply_async()
    strict = pipeline("https://example.com", title_required=True).apply_async()
    print("enqueued two graphs; starting a worker until the queue is empty")
    worker = [sys.executable, "-m", "decortask", "worker", "-A", "examples.graphs", "--burst", "-l", "ERROR"]
    subprocess.run(worker, check=True)
    print(f"tolerant graph: {tolerant.status()}, summary: {tolerant['summary'].get(timeout=10)}")
    try:
        strict.get(timeout=10)
    except GraphFailed as exc:
        states = ", ".join(f"{name} {state}" for name, state in exc.states.items())
        print(f"strict graph: {exc.status}: {states}")
    print(f"strict graph's finally node: {strict['report'].get(timeout=10)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
