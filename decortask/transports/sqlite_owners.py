"""The embedded broker's consumers, known alive by `flock` (`filelocks`): a dead one's leases end at once.

A channel that leases messages holds a lock file named after its lease owner beside the database. Every
consuming channel sweeps the directory about once a second: a file whose lock it can take belongs to a
channel whose process died, so that owner's leased messages are made visible again right away, instead
of after `lease_seconds`. The worker's receipt rules then settle them as every redelivery is settled.
Consumers of an older decortask hold no file and keep the lease-only behaviour. `FileProbe` is the same
mechanism for worker ids (`liveness.LivenessProbe`), used when the broker is `sqlite://`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import filelocks
from ..liveness import Verdict
from ..store.base import HEARTBEAT_TTL

logger = logging.getLogger("decortask.transport")

#: How often a consuming channel looks for dead consumers' leases.
SWEEP_INTERVAL = 1.0


class ConsumerLock:
    """One channel's lock file, and its sweep of the others'."""

    def __init__(self, database: str, owner: str) -> None:
        self.directory = filelocks.lock_dir(database)
        self.owner = owner
        self.path = self.directory / filelocks.file_name("consumer", owner)
        self._fd: int | None = None
        self._failed = not filelocks.AVAILABLE
        self._sweep_at = 0.0

    def hold(self) -> None:
        """Take the lock before the first lease (no-op once held, or where there is no flock)."""
        if self._fd is not None or self._failed:
            return
        try:
            self._fd = filelocks.hold(self.path, self.owner)
        except OSError as exc:  # e.g. a read-only directory: this channel's leases then simply run out
            self._failed = True
            logger.warning("could not create %s (%s); a killed consumer's leases run out", self.path, exc)

    def sweep_due(self) -> bool:
        return self._fd is not None and time.monotonic() >= self._sweep_at

    def dead_owners(self) -> list[Path]:
        """Lock files of consumers that died (the caller releases their leases, then `forget`s them)."""
        self._sweep_at = time.monotonic() + SWEEP_INTERVAL
        dead = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        for entry in entries:
            if entry.name.startswith("consumer-") and entry.path != str(self.path):
                try:
                    if filelocks.holder_dead(Path(entry.path)):
                        dead.append(Path(entry.path))
                except OSError:
                    continue
        return dead

    @staticmethod
    def owner_of(path: Path) -> str | None:
        """The lease owner a dead consumer's file names (its first line)."""
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        return lines[0] if lines else None

    def release(self) -> None:
        if self._fd is not None:
            filelocks.release(self.path, self._fd)
            self._fd = None


class FileProbe:
    """`liveness.LivenessProbe` for the embedded SQLite broker: one lock file per worker id."""

    def __init__(self, database: str) -> None:
        self.directory = filelocks.lock_dir(database)
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, worker_id: str) -> Path:
        return self.directory / filelocks.file_name("worker", worker_id)

    def hold(self, worker_id: str) -> None:
        if not filelocks.AVAILABLE:
            return
        filelocks.prune(self.directory, HEARTBEAT_TTL)
        with self._lock:
            if worker_id not in self._held:
                self._held[worker_id] = filelocks.hold(self._path(worker_id), worker_id)

    def keep(self) -> None:
        """Nothing to do: a lock lives as long as the process."""

    def release(self, worker_id: str) -> None:
        with self._lock:
            fd = self._held.pop(worker_id, None)
        if fd is not None:
            filelocks.release(self._path(worker_id), fd)

    def look(self, worker_ids: Iterable[str]) -> dict[str, Verdict]:
        verdicts = {}
        for worker_id in worker_ids:
            if not filelocks.AVAILABLE:
                verdicts[worker_id] = Verdict.UNKNOWN
                continue
            try:
                dead = filelocks.holder_dead(self._path(worker_id))
            except OSError:
                dead = None
            verdicts[worker_id] = {True: Verdict.DEAD, False: Verdict.ALIVE, None: Verdict.UNKNOWN}[dead]
        return verdicts

    def close(self) -> None:
        with self._lock:
            held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)  # not a clean stop: the file stays, and reads as a dead holder's


def sweep(lock: ConsumerLock, release_owner: Callable[[str], object]) -> None:
    """Give back every dead consumer's leases (`release_owner(owner)`), then remove its file."""
    for path in lock.dead_owners():
        owner = ConsumerLock.owner_of(path)
        if owner is not None:
            release_owner(owner)
        filelocks.remove_if_dead(path)
