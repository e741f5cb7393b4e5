"""Whether a worker is alive: the one decision, from its connection first and its heartbeat second.

A worker holds its identity on a connection it keeps open for its whole life (`LivenessProbe.hold`): an
exclusive queue on RabbitMQ, a client name on Redis, an exclusive `flock` beside the embedded SQLite
broker's database. The kernel or the broker drops that hold the moment the process dies, so a SIGKILLed
worker is known dead within about a second (`Verdict.DEAD`), where its heartbeat would take `lease_timeout`
to go stale.

A probe only ever says DEAD when it saw the identity once held and now released: a worker that never held
one (an older decortask, another broker), a probe that cannot reach its server, or a server that has just
restarted all answer UNKNOWN. ALIVE never overrides a stale heartbeat: a host cut off from the network may
keep its broker connection looking open for minutes, and it is declared dead by the lease as before.
So `Liveness.alive` is: never if the probe says DEAD, else a heartbeat younger than `lease_timeout`, as
`clock.HeartbeatWatch` judges it (the stamp still changing, whatever the two hosts' clocks say).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .clock import HeartbeatWatch
from .security import mask_text

if TYPE_CHECKING:
    from .app import Decortask

logger = logging.getLogger("decortask.worker")

#: How long one probe answer is reused (the reaper, a burst of redeliveries and the pool threads share it).
VERDICT_TTL = 0.5
#: How often a holder checks that its identity is still held, and takes it again if its connection dropped.
KEEP_INTERVAL = 1.0


class Verdict(enum.Enum):
    """What a probe knows of one worker id."""

    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


class LivenessProbe(Protocol):
    """Holds this process's worker identities on a connection, and looks at other workers' (any thread)."""

    def hold(self, worker_id: str) -> None:
        """Hold `worker_id` until `release`, or until this process dies."""
        ...

    def keep(self) -> None:
        """Check the held identities are still held; take them again if the connection dropped."""
        ...

    def release(self, worker_id: str) -> None:
        """Stop holding `worker_id` after a clean stop (no one then mistakes it for a crash)."""
        ...

    def look(self, worker_ids: Iterable[str]) -> dict[str, Verdict]:
        """Each id's verdict; UNKNOWN for any the probe cannot answer for."""
        ...

    def close(self) -> None:
        """Drop the probe's connections (held identities are released with them)."""
        ...


def identity_of(owner: str) -> str:
    """The worker id whose connection holds `owner`: a process-pool child (`<worker id>/<pid>`) lives
    and dies with its worker."""
    worker, sep, pid = owner.rpartition("/")
    return worker if sep and pid.isdigit() and worker else owner


class Liveness:
    """`alive(owner)` for one process: its own ids are alive; others by probe, then by heartbeat.

    Args:
        app: the app whose store holds the heartbeats and whose settings give `lease_timeout`.
        is_self: whether an owner id is this process's own (never probed).
        probe: the probe for the app's broker, or None (heartbeats only).
    """

    def __init__(self, app: Decortask, is_self: Callable[[str], bool], probe: LivenessProbe | None) -> None:
        self.app = app
        self.is_self = is_self
        self.probe = probe
        self._verdicts: dict[str, tuple[float, Verdict]] = {}
        self._lock = threading.Lock()
        self._probing = threading.Lock()
        #: Other workers' heartbeat stamps as this process reads them (judged without comparing clocks).
        self.heartbeats = HeartbeatWatch(app.settings.lease_timeout)

    def alive(self, owner: str) -> bool:
        """Whether the worker `owner` is alive: not known dead by the probe, and heartbeating."""
        if self.is_self(owner):
            return True
        if self.verdicts([owner]).get(identity_of(owner)) is Verdict.DEAD:
            return False
        return self.heartbeats.alive(owner, self.app.store.last_heartbeat(owner))

    def verdicts(self, owners: Iterable[str]) -> dict[str, Verdict]:
        """The probe's verdicts for the workers holding `owners`, by worker id (reused for VERDICT_TTL)."""
        ids = {identity_of(owner) for owner in owners if not self.is_self(owner)}
        ids = {worker_id for worker_id in ids if not self.is_self(worker_id)}  # a child of this worker
        if self.probe is None or not ids:
            return {}
        known = self._cached(ids)
        if ids - known.keys():
            # One look at a time: a burst of redeliveries for one dead worker asks the probe once.
            with self._probing:
                known = self._cached(ids)
                if ids - known.keys():
                    known.update(self._look(self.probe, ids - known.keys()))
        return known

    def _cached(self, ids: set[str]) -> dict[str, Verdict]:
        now = time.monotonic()
        with self._lock:
            return {i: v for i, (at, v) in self._verdicts.items() if i in ids and now - at < VERDICT_TTL}

    def _look(self, probe: LivenessProbe, missing: set[str]) -> dict[str, Verdict]:
        now = time.monotonic()
        try:
            fresh = probe.look(sorted(missing))
        except Exception as exc:  # a probe that cannot answer knows nothing; heartbeats still decide
            logger.warning("liveness probe failed (%s); using heartbeats", mask_text(str(exc)))
            fresh = {}
        found = {worker_id: fresh.get(worker_id, Verdict.UNKNOWN) for worker_id in missing}
        with self._lock:
            self._verdicts.update((worker_id, (now, verdict)) for worker_id, verdict in found.items())
            if len(self._verdicts) > 10_000:
                self._verdicts = {i: e for i, e in self._verdicts.items() if now - e[0] < VERDICT_TTL}
        return found


class Holder:
    """Holds a worker's identity for the life of its `run()`: taken at start, kept by a thread, released
    on a clean stop. Failures are logged: a worker without a hold is still judged by its heartbeat."""

    def __init__(self, probe: LivenessProbe | None, worker_id: str) -> None:
        self.probe = probe
        self.worker_id = worker_id
        self._done = threading.Event()

    def start(self) -> None:
        if self.probe is None:
            return
        try:
            self.probe.hold(self.worker_id)
        except Exception as exc:
            logger.warning(
                "could not hold worker identity %s on the broker (%s); other workers see this worker's "
                "death by its heartbeat only (lease_timeout)",
                self.worker_id,
                mask_text(str(exc)),
            )
        threading.Thread(target=self._keep, name="decortask-liveness", daemon=True).start()

    def _keep(self) -> None:
        while not self._done.wait(KEEP_INTERVAL):
            try:
                assert self.probe is not None
                self.probe.keep()
            except Exception as exc:
                logger.warning("could not keep worker identity %s (%s)", self.worker_id, mask_text(str(exc)))

    def stop(self, clean: bool) -> None:
        """Stop keeping the hold; on a clean stop release it, so the worker is not taken for a crash."""
        self._done.set()
        if self.probe is None:
            return
        try:
            if clean:
                self.probe.release(self.worker_id)
            self.probe.close()
        except Exception as exc:
            logger.warning("could not release worker identity %s (%s)", self.worker_id, mask_text(str(exc)))
