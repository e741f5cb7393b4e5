"""The shared no-op workload: count completions for the drain measure, answer latency probes by UDP.

Every system's task calls `work(port)`. With a port it sends one datagram back to the waiting client (the
round-trip probe, identical for all systems, so Celery needs no result backend). Without one it counts the
completion; when `BENCH_EXPECTED` completions have been seen, the first and last completion times go to
`BENCH_OUT` as JSON. All state is per worker process (every system runs one process of 8 threads).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

_lock = threading.Lock()
_count = 0
_first: float | None = None
_expected = int(os.environ.get("BENCH_EXPECTED", "0") or 0)
_out = os.environ.get("BENCH_OUT", "")
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def work(port: int = 0) -> None:
    """The task body of every system."""
    global _count, _first
    if port:
        _sock.sendto(b"1", ("127.0.0.1", port))
        return
    now = time.time()
    with _lock:
        _count += 1
        if _first is None:
            _first = now
        if _count == _expected and _out:
            tmp = _out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump({"first": _first, "last": now, "count": _count}, fh)
            os.replace(tmp, _out)
