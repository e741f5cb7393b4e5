"""The liveness methods of `RedisStore`: worker heartbeats and clean stops.

Keys: `ns:heartbeat:WORKER` holds the last heartbeat time and `ns:stopped:WORKER` when the worker stopped
cleanly; both expire after a day (a worker silent for a day counts as dead either way).
"""

from __future__ import annotations

import contextlib

import redis

from .base import HEARTBEAT_TTL

#: Keys read per SCAN call.
SCAN_COUNT = 500


class RedisLiveness:
    """`heartbeat`, `last_heartbeat`, `heartbeats`, `worker_stopped` and `stopped_workers`."""

    _client: redis.Redis
    namespace: str

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def heartbeat(self, worker_id: str, now: float) -> None:
        with self._errors():
            self._client.set(f"{self.namespace}:heartbeat:{worker_id}", repr(now), ex=HEARTBEAT_TTL)

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._errors():
            value = self._client.get(f"{self.namespace}:heartbeat:{worker_id}")
        return float(value) if value is not None else None

    def heartbeats(self) -> dict[str, float]:
        return self._times(f"{self.namespace}:heartbeat:")

    def worker_stopped(self, worker_id: str, now: float) -> None:
        with self._errors():
            self._client.set(f"{self.namespace}:stopped:{worker_id}", repr(now), ex=HEARTBEAT_TTL)

    def stopped_workers(self) -> dict[str, float]:
        return self._times(f"{self.namespace}:stopped:")

    def _times(self, prefix: str) -> dict[str, float]:
        with self._errors():
            keys = list(self._client.scan_iter(match=prefix + "*", count=SCAN_COUNT))
            values = self._client.mget(keys) if keys else []
        # A key that expired between the scan and the read is simply left out.
        return {
            _text(key)[len(prefix) :]: float(value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
