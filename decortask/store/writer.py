"""Group commit for a worker's state transitions: the claims and outcomes of all pool threads share commits.

Eight pool threads that each open their own write transaction on a SQLite file queue up on its one write
lock (SQLite's busy handler sleeps in millisecond steps while it waits). `StoreWriter` lets the first
caller lead: it applies every transition pending at that moment in one transaction
(`BatchingStore.transition_many`) while the others wait, and each caller gets back its own
compare-and-set result, exactly what `TaskStore.transition` would have returned. A caller returns only
after the commit that holds its change, so the worker still acks only what is durably written.

SQLite and Redis stores batch (`transition_many`: one transaction, one Lua call); a store without it
(memory) is called directly, one transition per call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..states import TaskStatus
from .base import LogLine, TaskRecord, TaskStore, Transitions, TransitionStep, claim_step

# `TransitionStep` and `claim_step` live in base.py (the backends take steps); importable from here as well.
__all__ = ["MAX_BATCH", "BatchingStore", "StoreWriter", "TransitionStep", "claim_step"]

#: Most transitions applied in one transaction: bounds how long one commit holds the write lock.
MAX_BATCH = 64


@runtime_checkable
class BatchingStore(Protocol):
    """A store that applies many transitions in one atomic, durable step."""

    def transition_many(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        """Apply `steps` in order in one transaction; for each, what `transition` returns or raises.

        A step's own error (e.g. `IllegalTransition`) is returned in its place and writes nothing for that
        step; a failure of the store itself raises `StoreError` and writes nothing at all.
        """
        ...


class _Pending:
    """One caller's step. `ready` is a lock taken at creation and released once to wake the caller (a
    bare lock: a `threading.Event` is a condition variable, and its `set` took a tenth of the GIL time
    of a draining worker in a profile)."""

    __slots__ = ("lead", "outcome", "ready", "step")

    def __init__(self, step: TransitionStep) -> None:
        self.step = step
        self.ready = threading.Lock()
        self.ready.acquire()
        #: Set (under the writer's lock) when this caller must lead the next batch.
        self.lead = False
        self.outcome: TaskRecord | BaseException | None = None


class StoreWriter(Transitions):
    """Applies the transitions of many threads in shared transactions; one per worker and store.

    `transition` (inherited from `Transitions`) is `TaskStore.transition`, committed together with the
    other threads' pending transitions. Call only from code that no forced stop can interrupt (the
    executor's own bookkeeping, never from a task's code): a leader applies other threads' writes, and must
    always hand over what it took. Records it returns from a batching store carry no log lines (the
    executor never reads them).
    """

    returns_logs = False

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self._batching: BatchingStore | None = store if isinstance(store, BatchingStore) else None
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    def claim(self, task_id: str, attempt: int, max_deliveries: int, **changes: Any) -> TaskRecord | None:
        """Claim attempt `attempt` of a claimable task at `attempt - 1`, counting one more delivery.

        None when the record is missing, not claimable, at another attempt, or out of deliveries: the
        caller then reads the record to find out which (the rare path).
        """
        return self.apply_step(claim_step(task_id, attempt, max_deliveries, **changes))

    def settle(
        self,
        task_id: str,
        status: TaskStatus,
        expect: TaskStatus,
        expect_attempt: int,
        log_lines: Sequence[LogLine] = (),
        **changes: Any,
    ) -> bool:
        """`transition(task_id, status, expect={expect}, ...)` for a caller that asks only whether it held
        (an attempt's outcome): True if it did. The store may skip reading the record back
        (`TransitionStep.read_back`).
        """
        step = TransitionStep(
            task_id,
            status,
            frozenset({expect}),
            expect_attempt,
            changes=changes,
            logs=False,
            log_lines=tuple(log_lines),
            read_back=False,
        )
        return self.apply_step(step) is not None

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        """Apply one step in the next group commit; returns its result or raises its error.

        A store without batches (memory) applies it at once, one call per step.
        """
        if self._batching is None:
            return self.store.apply_step(step)
        pending = _Pending(step)
        with self._lock:
            self._queue.append(pending)
            if not self._leading:
                self._leading = pending.lead = True
        if not pending.lead:
            pending.ready.acquire()  # released once: when the outcome is in, or to lead
        if pending.lead:  # first in, or handed the lead by the previous leader
            self._lead()
        outcome = pending.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        assert self._batching is not None
        try:
            outcomes = self._batching.transition_many([p.step for p in batch])
            for pending, outcome in zip(batch, outcomes, strict=True):
                pending.outcome = outcome
        except BaseException as exc:
            # Every caller of the batch sees the failure and retries on its own terms.
            for pending in batch:
                pending.outcome = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._lock:
                if self._queue:  # those who came in meanwhile: the first of them leads the next batch
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.ready.release()
                else:
                    self._leading = False
            for pending in batch:
                if pending.lead:  # this leader itself: it is not waiting
                    pending.lead = False
                else:
                    pending.ready.release()
