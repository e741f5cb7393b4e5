"""The store sweeps every worker's reaper loop runs, at most every `SWEEP_INTERVAL` seconds per process:
what a worker killed right after a task's outcome left undone, which no redelivery may bring back soon
(Redis gives an unacked message back only after its visibility timeout, an hour).

- `late_results.sweep`: the children's mailboxes of spawning tasks that ended, and late results not
  delivered.
- `followups.sweep`: what follows a workflow's task (next chain step, chord callback, graph dependents,
  links).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import followups, late_results

if TYPE_CHECKING:
    from .app import Decortask

#: Seconds between two sweeps of one worker (a recovery path: the reaper loop runs every second).
SWEEP_INTERVAL = 5.0

_lock = threading.Lock()
_next_sweep = 0.0


def maybe_sweep(app: Decortask, owner_alive: Callable[[str], bool]) -> int:
    """Run every sweep if `SWEEP_INTERVAL` passed since this process last did; how many things they
    settled (0 when it was too soon)."""
    global _next_sweep
    now = time.monotonic()
    with _lock:
        if now < _next_sweep:
            return 0
        _next_sweep = now + SWEEP_INTERVAL
    return late_results.sweep(app) + followups.sweep(app, owner_alive)
