"""The wall clock of the times decortask compares across hosts, and how a worker judges another's heartbeat.

Heartbeats, claims (`started_at`), outcome times, schedule due times, the reaper and the schedule's claims read
`now()`. It is `time.time()` plus `DECORTASK_CLOCK_SKEW_SECONDS`, read once at import: a test-only setting that
gives one process a clock off by that many seconds, as a host whose clock drifted would have (the multi-host
harness, tests/test_multihost.py). Never set it in production.

Another worker's heartbeat stamp was written by that worker's clock, so comparing it with this one's is only as
good as the two clocks' agreement. `HeartbeatWatch` judges stamps without trusting either clock further than
it must: a worker is alive while its stamp keeps changing, and dead once this worker has watched the stamp
stay the same for `lease_timeout` on its own monotonic clock. Only a stamp seen for the first time is judged
by the wall clocks, with room for their disagreement (`FIRST_SIGHT_LEASES`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from .errors import ConfigurationError


def _skew() -> float:
    text = os.environ.get("DECORTASK_CLOCK_SKEW_SECONDS", "").strip()
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(
            f"DECORTASK_CLOCK_SKEW_SECONDS must be a number of seconds, not {text!r} "
            "(it is a test-only setting: unset it)"
        ) from None


#: Seconds this process's clock is off the machine's (test-only, `DECORTASK_CLOCK_SKEW_SECONDS`).
SKEW = _skew()


def now() -> float:
    """UNIX seconds by this host's clock (with the test-only skew)."""
    return time.time() + SKEW


#: A stamp never seen before counts as dead at once only when it looks this many leases old by the wall clocks,
#: so a worker whose clock runs behind by less than a lease is not declared dead on sight; a younger one is
#: watched for a lease like any other.
FIRST_SIGHT_LEASES = 2.0
#: Stamps not looked at for this many leases are forgotten (their workers are long gone or long judged).
FORGET_LEASES = 10.0


class HeartbeatWatch:
    """Whether workers are alive, from their heartbeat stamps as this worker keeps reading them.

    Thread-safe; one per worker process. `monotonic` and `wall` are seams for tests.
    """

    def __init__(
        self,
        lease_timeout: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = now,
    ) -> None:
        self.lease_timeout = lease_timeout
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        #: owner -> (the stamp last read, when this worker first read that stamp, when it last looked).
        self._seen: dict[str, tuple[float, float, float]] = {}

    def alive(self, owner: str, stamp: float | None) -> bool:
        """Judge `owner` from `stamp`, its last heartbeat as just read from the store (None: none kept)."""
        if stamp is None:
            return False
        t = self._monotonic()
        with self._lock:
            known = self._seen.get(owner)
            if known is not None and known[0] == stamp:
                first = known[1]
            elif known is not None:
                first = t  # it beat since this worker last looked
            elif self._wall() - stamp < self.lease_timeout * FIRST_SIGHT_LEASES:
                first = t  # first sight, young enough whatever the clocks: watch it from now
            else:
                first = t - self.lease_timeout  # first sight, too old for any skew allowed: dead
            self._seen[owner] = (stamp, first, t)
            if known is None:
                self._forget_old(t)
        return t - first < self.lease_timeout

    def _forget_old(self, t: float) -> None:
        horizon = t - self.lease_timeout * FORGET_LEASES
        if len(self._seen) > 64:
            for owner in [o for o, (_, _, looked) in self._seen.items() if looked < horizon]:
                del self._seen[owner]
