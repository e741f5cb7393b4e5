"""A signal handled while the worker's consumer thread waits for outcomes must not stretch that wait.

SIGTERM is handled on the main thread, which is the consumer thread, and while every pool slot is busy that
thread spends nearly all its time waiting a few milliseconds for an outcome. The wait must still end on its
own timeout when a signal handler ran during it, or shutdown waits for the next task to end and `--grace`
means nothing (issue 10, item 9; the repeated real-worker test is in test_faults.py).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from decortask import Decortask
from decortask.app import reset_default_app
from decortask.executor import Outcome, Settle
from decortask.transport import Delivery
from decortask.worker import Worker

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM and setitimer")

#: The wait under test, when the signal lands inside it, and how long its handler runs: well past the wait.
WAIT = 0.1
SIGNAL_AFTER = 0.02
HANDLER_RUNS = 0.3
#: When the running task's outcome arrives; a wait that ended on its own timeout is long over by then.
OUTCOME_AFTER = 10.0


class RecordingSession:
    """Stands in for the consumer session: records what the worker settles."""

    connection_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self.acked: list[Delivery] = []

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery)

    def send_acks(self) -> None:
        """Nothing held: `ack` records at once."""


@pytest.fixture
def worker() -> Iterator[Worker]:
    app = Decortask("memory://", "memory://", set_default=False)
    try:
        yield Worker(app, concurrency=1)
    finally:
        app.close()
        reset_default_app()


def _slow_handler(signum: int, frame: Any) -> None:
    # A handler that outlasts the wait it interrupted, like a SIGTERM handler waiting for the GIL.
    threading.Event().wait(HANDLER_RUNS)


def test_a_signal_during_the_wait_for_outcomes_does_not_stretch_it(worker: Worker) -> None:
    session = RecordingSession()
    worker._in_flight = 1  # one task is running; its outcome comes much later
    delivery = Delivery(b"{}", "application/json", {}, "default", False, raw=None)
    done: Future[Outcome] = Future()
    done.set_result(Outcome(Settle.ACK))
    late_outcome = threading.Timer(OUTCOME_AFTER, lambda: worker._outcomes.put((delivery, done)))
    previous = signal.signal(signal.SIGALRM, _slow_handler)
    late_outcome.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, SIGNAL_AFTER)
        worker._settle_ready(session, block=True, timeout=WAIT)  # type: ignore[arg-type]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        late_outcome.cancel()
    # The wait ended on its own timeout: the task's outcome had not come, so nothing was settled.
    assert (worker._in_flight, session.acked) == (1, [])


@pytest.mark.parametrize(
    ("signum", "hint"),
    [
        (signal.SIGTERM, "SIGINT (Ctrl-C) interrupts them now"),
        (signal.SIGINT, "Ctrl-C again interrupts them now"),
    ],
)
def test_the_first_stop_signal_names_what_interrupts_running_tasks(
    worker: Worker, caplog: pytest.LogCaptureFixture, signum: int, hint: str
) -> None:
    """After a SIGTERM the line said "SIGINT again", as if a SIGINT had come before."""
    with caplog.at_level("WARNING", logger="decortask.worker"):
        worker._on_signal(signum, None)
    (line,) = [r.getMessage() for r in caplog.records if "no longer consuming" in r.getMessage()]
    assert line.startswith(f"{signal.Signals(signum).name}: no longer consuming") and hint in line, line
    assert "again" not in line or signum == signal.SIGINT
