"""The shared no-op workload: count completions for the drain measures, answer readiness probes by UDP.

Every system's no-op task calls `work(port)`. With a port it sends one datagram back to the waiting client
(the readiness probe, identical for all systems). Without one it counts the completion; at the first and at
the `BENCH_EXPECTED`-th completion it reads the clock and the CPU time, and at the last it writes both pairs
to `BENCH_OUT` as JSON. CPU time is read inside the process that runs the tasks (Dramatiq's worker child,
not its master): `time.process_time()` for that process, and utime + stime from /proc of every process in
the worker's process tree (the harness starts each worker as the leader of a session of its own) for the
whole worker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_count = 0
_first: dict[str, float] = {}
_expected = int(os.environ.get("BENCH_EXPECTED", "0") or 0)
_out = os.environ.get("BENCH_OUT", "")
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu() -> float:
    """CPU seconds (user + system) of the worker: its session leader and all the leader's descendants."""
    total, todo = 0, [os.getsid(0)]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            for tid in os.listdir(f"/proc/{pid}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:  # exited meanwhile
            continue
        # after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _snapshot(first: bool) -> dict[str, float]:
    # the /proc scan costs a few ms: outside the span whose own-process CPU is measured
    if first:
        tree = session_cpu()
        return {"tree": tree, "cpu": time.process_time(), "time": time.time()}
    now, cpu = time.time(), time.process_time()
    return {"time": now, "cpu": cpu, "tree": session_cpu()}


def work(port: int = 0) -> None:
    """The task body of every system."""
    global _count
    if port:
        _sock.sendto(b"1", ("127.0.0.1", port))
        return
    with _lock:
        _count += 1
        if _count == 1:
            _first.update(_snapshot(first=True))
        if _count == _expected and _out:
            last = _snapshot(first=False)
            done = {
                "count": _count,
                "first": _first["time"],
                "last": last["time"],
                "cpu_first": _first["cpu"],
                "cpu_last": last["cpu"],
                "tree_first": _first["tree"],
                "tree_last": last["tree"],
            }
            tmp = _out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(done, fh)
            os.replace(tmp, _out)
