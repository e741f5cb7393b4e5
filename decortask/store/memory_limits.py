"""The memory store's rate logs and concurrency slots (`limit_state.py`), behind the store's lock."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .limit_state import Lease, LimitStore, RateBucket, reserve


class _Logs:
    """`limit_state.RateLog` over dicts: bucket -> member -> (score, started)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, tuple[float, bool]]] = {}

    def trim(self, bucket: str, upto: float) -> None:
        log = self.entries.get(bucket, {})
        for member in [m for m, (score, _) in log.items() if score <= upto]:
            del log[member]

    def entry(self, bucket: str, member: str) -> tuple[float, bool] | None:
        return self.entries.get(bucket, {}).get(member)

    def nth_latest(self, bucket: str, n: int, *, starts_only: bool = False) -> float | None:
        log = self.entries.get(bucket, {}).values()
        ranked = sorted((score for score, started in log if started or not starts_only), reverse=True)
        return ranked[n - 1] if len(ranked) >= n else None

    def count_starts(self, bucket: str, after: float) -> int:
        log = self.entries.get(bucket, {}).values()
        return sum(1 for score, started in log if started and score > after)

    def put(self, bucket: str, member: str, score: float, started: bool) -> None:
        self.entries.setdefault(bucket, {})[member] = (score, started)

    def remove(self, bucket: str, member: str) -> None:
        self.entries.get(bucket, {}).pop(member, None)


class MemoryLimits(LimitStore):
    """`LimitStore` for `MemoryStore`: one lock of its own, the state in this process."""

    _limits_lock = threading.Lock()  # guards only the lazy creation below
    _limits: tuple[threading.Lock, _Logs, dict[str, dict[str, Lease]]]

    def _limit_tables(self) -> tuple[threading.Lock, _Logs, dict[str, dict[str, Lease]]]:
        tables = getattr(self, "_limits", None)
        if tables is None:
            with MemoryLimits._limits_lock:
                tables = getattr(self, "_limits", None)
                if tables is None:
                    tables = self._limits = (threading.Lock(), _Logs(), {})
        return tables

    def reserve_rate(
        self, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
    ) -> float:
        lock, logs, _ = self._limit_tables()
        with lock:
            return reserve(logs, member, buckets, now, early)

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        lock, _, slots = self._limit_tables()
        with lock:
            held = slots.setdefault(bucket, {})
            if holder in held:
                return held[holder].owner == owner
            if len(held) >= limit:
                return False
            held[holder] = Lease(holder, owner, now)
            return True

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        lock, _, slots = self._limit_tables()
        with lock:
            lease = slots.get(bucket, {}).get(holder)
            if lease is not None and (owner is None or lease.owner == owner):
                del slots[bucket][holder]

    def slot_holders(self, bucket: str) -> list[Lease]:
        lock, _, slots = self._limit_tables()
        with lock:
            return sorted(slots.get(bucket, {}).values(), key=lambda lease: lease.since)
