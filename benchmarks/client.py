"""The producer side of one measure, run in a fresh process: `client.py SYSTEM ACTION N`; prints JSON.

Actions: `enqueue` (N calls of the normal per-call API, after one untimed warm-up call), `batch` (N calls
through the batch API), `ready` (probes until the worker answers), `latency` (N sequential probe + wait).
"""

from __future__ import annotations

import importlib
import json
import socket
import statistics
import sys
import time
from typing import Any


def _probe(system: Any, sock: socket.socket, timeout: float) -> float:
    start = time.perf_counter()
    system.probe(sock.getsockname()[1])
    sock.settimeout(timeout)
    sock.recvfrom(16)
    return time.perf_counter() - start


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
        result = {"rate": count / elapsed, "seconds": elapsed, "sent": count + 1}
    elif action in ("ready", "latency"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        if action == "ready":
            deadline = time.monotonic() + count
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
            result = {"ready": True}
        else:
            for _ in range(3):
                _probe(system, sock, 30.0)
            samples = sorted(_probe(system, sock, 30.0) for _ in range(count))
            result = {
                "p50": statistics.median(samples),
                "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            }
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
