"""The producer side of one measure, run in a fresh process: `client.py SYSTEM ACTION N`; prints JSON.

Actions: `enqueue` (N calls of the normal per-call API, after one untimed warm-up call, then the wait until
every message is published: decortask's outbox may publish after `.delay()` returned), `batch` (N calls
through the batch API), `ready` (probes by UDP until the worker answers), `roundtrip` (N sequential
round trips the way users wait for a result, after untimed warm-up ones).
"""

from __future__ import annotations

import importlib
import json
import socket
import statistics
import sys
import time
from typing import Any

#: Untimed round trips first: connections, the result backend's subscriptions, the worker's first task.
WARM_UP = 10


def _probe(system: Any, sock: socket.socket, timeout: float) -> None:
    system.probe(sock.getsockname()[1])
    sock.settimeout(timeout)
    sock.recvfrom(16)


def wait_ready(system: Any, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    deadline = time.monotonic() + seconds
    while True:
        try:
            _probe(system, sock, 2.0)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise SystemExit("the worker never answered a probe") from None
    # drain answers of earlier probes that arrived late
    sock.settimeout(0.5)
    try:
        while True:
            sock.recvfrom(16)
    except TimeoutError:
        pass


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    name, action, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    system = importlib.import_module(f"systems.bench_{name}")
    result: dict[str, Any] = {}
    if action in ("enqueue", "batch"):
        system.enqueue(1)  # opens connections outside the timed part
        run = system.enqueue if action == "enqueue" else system.enqueue_batch
        start = time.perf_counter()
        run(count)
        elapsed = time.perf_counter() - start
        flushed = system.flush()
        published = time.perf_counter() - start
        result = {
            "rate": count / elapsed,
            "published_rate": count / published if flushed else None,
            "seconds": elapsed,
            "sent": count + 1,
        }
    elif action == "ready":
        wait_ready(system, count)
        result = {"ready": True}
    elif action == "roundtrip":
        for i in range(WARM_UP):
            system.roundtrip(i)
        samples = []
        for i in range(count):
            start = time.perf_counter()
            system.roundtrip(i)
            samples.append(time.perf_counter() - start)
        samples.sort()
        result = {
            "p50": statistics.median(samples),
            "p99": percentile(samples, 0.99),
            "samples": len(samples),
        }
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
