"""Run `decortask worker` with one experimental change, to measure a design change before making it.

    python experiment_worker.py ack-poll=0.0005 -- worker -A ... (the decortask CLI arguments)

`ack-poll=S`: the consumer loop waits at most S seconds for deliveries while tasks are in flight
(decortask uses 0.005), so finished tasks are acked and the next deliveries fetched sooner.
`switch=S`: the interpreter's GIL switch interval (`sys.setswitchinterval`, Python's default 0.005).
"""

from __future__ import annotations

import sys
from typing import Any

from decortask import cli
from decortask.worker import Worker

change, _, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
name, _, value = change.partition("=")
if name == "ack-poll":
    cap = float(value)
    original = Worker._drain

    def capped(self: Worker, session: Any, timeout: float) -> Any:
        return original(self, session, min(timeout, cap))

    Worker._drain = capped  # type: ignore[method-assign]
elif name == "switch":
    sys.setswitchinterval(float(value))
sys.argv = ["decortask", *rest]
cli.main()
