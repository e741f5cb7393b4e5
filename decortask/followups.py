"""What follows a workflow's task, made durable: no workflow waits on a broker's redelivery.

A worker creates what follows a workflow's task (`workflow.continue_workflow`) after writing the task's
outcome and before acking its message. Killed in between, it leaves the message to the broker, which gives
it back at once on RabbitMQ but only after its visibility timeout on Redis (an hour) or its lease on the
embedded SQLite broker. So the outcome's write also marks the task "continuation pending", in the same
atomic store write (`store/follow_state.py`); `continue_workflow` clears the mark once what follows exists;
and this sweep, run from every worker's reaper loop (`sweeps.py`), runs `continue_workflow` again for a
task marked more than `GRACE` seconds ago whose owner is dead or gone (or still marked after `STALE`
seconds, whatever its owner). What it creates has derived ids, so a second run creates nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .security import mask_text
from .store.follow_state import FollowStore
from .workflow import continue_workflow

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.worker")
#: Seconds a mark must be old before the sweep looks at it (its own worker clears it within milliseconds).
GRACE = 3.0
#: Seconds after which a task still marked is continued even if its owner looks alive (its delivery failed
#: to continue it and the broker may hold the message for an hour).
STALE = 60.0
#: Marked tasks one sweep looks at.
SWEEP_BATCH = 200


def sweep(app: Decortask, owner_alive: Callable[[str], bool]) -> int:
    """Continue the workflows of tasks left marked by a worker that died between their outcome and what
    follows them; returns how many it continued."""
    store = app.store
    if not isinstance(store, FollowStore):
        return 0
    now = time.time()
    alive: dict[str, bool] = {}
    continued = 0
    for task_id in store.follow_pending(now - GRACE, SWEEP_BATCH):
        record = store.get(task_id)
        if record is None or not record.status.terminal or not isinstance(record.workflow, dict):
            store.follow_done(task_id)  # gone, run again, or nothing follows it
            continue
        owner = record.owner
        if owner and now - record.updated_at < STALE:
            if owner not in alive:
                alive[owner] = owner_alive(owner)
            if alive[owner]:
                continue  # its worker is on it
        try:
            continue_workflow(app, task_id, record.workflow, lambda step: step())
        except Exception as exc:  # one task's failure never stops the others; the next sweep retries it
            logger.warning("could not continue the workflow of task %s (%s)", task_id, mask_text(str(exc)))
            continue
        logger.warning(
            "created what follows task %s (%s), left behind by worker %s, which died after its outcome",
            task_id, record.name, owner,
        )  # fmt: skip
        continued += 1
    return continued
