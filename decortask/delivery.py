"""One delivery, start to outcome: decode and validate it, then refuse it or hand it to the executor.

What every pool runs for each message: a thread of the thread pool (`pools.py`), a process-pool child
(`procchild.py`), and the synchronous test driver (`testing.run_pending`). It never touches the broker; the
worker settles the Outcome on its consumer thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import late_results
from .errors import MessageError
from .message import decode
from .throttle import execute_within_limits

if TYPE_CHECKING:
    from .app import Decortask
    from .executor import Executor
    from .outcomes import Outcome
    from .transport import Delivery

logger = logging.getLogger("decortask.worker")


def process_delivery(app: Decortask, executor: Executor, delivery: Delivery) -> Outcome:
    """Decode, validate and execute one delivery; bad input becomes a dead-letter outcome."""
    if delivery.refused is not None:
        return executor.refuse(None, delivery.refused, delivery.refused_detail)
    try:
        message = decode(
            delivery.body,
            delivery.content_type,
            app.settings.max_payload_bytes,
            cipher=app.cipher,
        )
    except MessageError as exc:
        return executor.refuse(exc.task_id, exc.reason, exc.detail)
    except Exception as exc:
        # Whatever else a body can make the decoder raise, retrying it would fail the same way for ever.
        # Its dead letter is logged once when published; the traceback only at DEBUG.
        logger.debug("decoding a message on %s failed unexpectedly", delivery.queue, exc_info=True)
        return executor.refuse(None, "decode_error", f"unexpected {type(exc).__name__}")
    with late_results.attempt(app, message.id, executor.write):  # closes its mailbox if it spawned
        outcome = execute_within_limits(app, executor, message, delivery.queue)  # a task's limits: limits.py
    if message.workflow:  # a workflow's task: what follows it is created before its message is acked
        from .workflow import continue_workflow

        continue_workflow(app, message.id, message.workflow, executor.write)
    return outcome
