"""The store's flow-control primitives (issue 17), the same on every backend: rate reservations and
concurrency slots (decortask/store/limit_state.py). Times are given, never read from a clock."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import BACKENDS, fresh_store_url, own_redis_store

from decortask.store import open_store
from decortask.store.limit_state import LimitStore, RateBucket

T0 = 1_800_000_000.0
FIVE_PER_SECOND = RateBucket("t:5/1s:", 5, 1.0)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LimitStore]:
    opened = open_store(fresh_store_url(request, tmp_path, "limits"))
    assert isinstance(opened, LimitStore)
    yield opened
    opened.close()


def starts_in_windows(starts: list[float], window: float) -> int:
    """The most starts in any half-open window [t, t + window)."""
    starts = sorted(starts)
    return max(sum(1 for s in starts if t <= s < t + window) for t in starts)


@pytest.mark.parametrize("fraction", [0.1234564, 0.1234566, 0.9999996])
def test_start_now_is_now_itself_to_the_last_digit(store: LimitStore, fraction: float) -> None:
    """A caller compares the answer with its `now`: a start must never read as a moment after it."""
    now = T0 + fraction
    assert store.reserve_rate("a", [FIVE_PER_SECOND], now) == now


def test_a_burst_gets_count_starts_now_and_the_rest_queue_a_window_apart(store: LimitStore) -> None:
    answers = [store.reserve_rate(f"m{i}", [FIVE_PER_SECOND], T0) for i in range(12)]
    assert answers == [T0] * 5 + [T0 + 1] * 5 + [T0 + 2] * 2


def test_a_reservation_is_kept_when_asked_early_and_honoured_when_due(store: LimitStore) -> None:
    for i in range(5):
        store.reserve_rate(f"m{i}", [FIVE_PER_SECOND], T0)
    assert store.reserve_rate("late", [FIVE_PER_SECOND], T0 + 0.1) == T0 + 1
    assert store.reserve_rate("late", [FIVE_PER_SECOND], T0 + 0.5) == T0 + 1  # early: still waits
    assert store.reserve_rate("late", [FIVE_PER_SECOND], T0 + 1.2) == T0 + 1.2  # due: starts now


def test_a_start_that_would_crowd_a_window_is_reserved_again(store: LimitStore) -> None:
    bucket = RateBucket("t:2/1s:", 2, 1.0)
    assert store.reserve_rate("a", [bucket], T0) == T0
    assert store.reserve_rate("b", [bucket], T0) == T0
    assert store.reserve_rate("c", [bucket], T0) == T0 + 1
    assert store.reserve_rate("d", [bucket], T0) == T0 + 1
    assert store.reserve_rate("d", [bucket], T0 + 1.0) == T0 + 1.0  # d starts on time
    assert store.reserve_rate("e", [bucket], T0 + 1.0) == T0 + 2.0
    assert store.reserve_rate("f", [bucket], T0 + 1.0) == T0 + 2.0
    assert store.reserve_rate("e", [bucket], T0 + 2.0) == T0 + 2.0
    assert store.reserve_rate("f", [bucket], T0 + 2.0) == T0 + 2.0
    # c comes back late: the window ending now holds e and f, so it queues up again.
    assert store.reserve_rate("c", [bucket], T0 + 2.1) == T0 + 3.0


def test_a_late_start_with_room_around_it_goes_ahead(store: LimitStore) -> None:
    bucket = RateBucket("t:2/1s:", 2, 1.0)
    for member in "abcd":
        store.reserve_rate(member, [bucket], T0)
    assert store.reserve_rate("d", [bucket], T0 + 1.0) == T0 + 1.0
    assert store.reserve_rate("c", [bucket], T0 + 1.6) == T0 + 1.6  # only d in (T0 + 0.6, T0 + 1.6]


def test_a_reservation_crowded_out_waits_only_for_the_window_not_for_the_line(store: LimitStore) -> None:
    bucket = RateBucket("t:1/1s:", 1, 1.0)
    assert [store.reserve_rate(m, [bucket], T0) for m in "abcd"] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert store.reserve_rate("b", [bucket], T0 + 1.9) == pytest.approx(T0 + 1.9)  # b came late
    assert store.reserve_rate("c", [bucket], T0 + 2.0) == pytest.approx(T0 + 2.9)  # a window after b
    assert store.reserve_rate("c", [bucket], T0 + 2.9) == pytest.approx(T0 + 2.9)
    assert store.reserve_rate("d", [bucket], T0 + 3.0) == pytest.approx(T0 + 3.9)


def test_a_member_back_a_little_early_starts_if_the_window_has_room(store: LimitStore) -> None:
    bucket = RateBucket("t:1/1s:", 1, 1.0, spacing=1.2)
    assert [store.reserve_rate(m, [bucket], T0) for m in "ab"] == [T0, T0 + 1.2]  # spaced 1.2 apart
    assert store.reserve_rate("b", [bucket], T0 + 0.9, early=0.25) == T0 + 1.2  # the window still holds a
    assert store.reserve_rate("b", [bucket], T0 + 1.05, early=0.25) == pytest.approx(T0 + 1.05)  # a has left


def test_a_start_stamped_a_moment_ahead_by_another_clock_still_counts(store: LimitStore) -> None:
    bucket = RateBucket("t:1/1s:", 1, 1.0)
    assert store.reserve_rate("a", [bucket], T0 + 0.01) == T0 + 0.01
    assert store.reserve_rate("b", [bucket], T0) == pytest.approx(T0 + 1.01)


def test_every_limit_of_a_task_holds_at_once(store: LimitStore) -> None:
    per_second, per_day = RateBucket("t:3/1s:", 3, 1.0), RateBucket("t:4/86400s:", 4, 86400.0)
    answers = [store.reserve_rate(f"m{i}", [per_second, per_day], T0) for i in range(5)]
    assert answers == [T0, T0, T0, T0 + 1, T0 + 86400]


def test_buckets_of_different_keys_do_not_share_starts(store: LimitStore) -> None:
    acme, globex = RateBucket("t:1/1s:acme", 1, 1.0), RateBucket("t:1/1s:globex", 1, 1.0)
    assert store.reserve_rate("a1", [acme], T0) == T0
    assert store.reserve_rate("g1", [globex], T0) == T0
    assert store.reserve_rate("a2", [acme], T0) == T0 + 1


def test_starts_leave_the_window_as_time_passes(store: LimitStore) -> None:
    for i in range(5):
        assert store.reserve_rate(f"m{i}", [FIVE_PER_SECOND], T0 + i * 0.3) == T0 + i * 0.3
    assert store.reserve_rate("m5", [FIVE_PER_SECOND], T0 + 1.0) == pytest.approx(T0 + 1.0)  # m0 has left


def test_redis_keys_of_a_bucket_live_as_long_as_its_furthest_reservation(redis_url: str) -> None:
    """The Redis keys expire once idle; a start now must not cut short the reservations ahead of it."""
    with own_redis_store(redis_url, f"limits-ttl-{uuid.uuid4().hex[:8]}") as store:
        bucket = RateBucket("t:1/10s:", 1, 10.0)
        now = time.time()
        assert [store.reserve_rate(m, [bucket], now) for m in "abc"] == pytest.approx(
            [now, now + 10, now + 20]
        )
        # b, back early and crowded out by a, is put back at its time: the key must still outlive c.
        assert store.reserve_rate("b", [bucket], now + 0.5, early=10.0) == pytest.approx(now + 10)
        assert store._client.pttl(f"{store.namespace}:rate:t:1/10s:") > 25_000


def test_concurrent_reservations_never_crowd_a_window(store: LimitStore) -> None:
    """Six threads asking at once (one process; the store's atomicity is what keeps the count)."""
    answers: list[float] = []
    lock = threading.Lock()

    def ask(worker: int) -> None:
        for i in range(10):
            start = store.reserve_rate(f"w{worker}-{i}", [FIVE_PER_SECOND], T0)
            with lock:
                answers.append(start)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 60
    assert starts_in_windows(answers, 1.0) == 5
    assert max(answers) == T0 + 11


def test_a_slot_bucket_holds_at_most_its_limit(store: LimitStore) -> None:
    assert store.acquire_slot("s", "t1", "w1", 2, T0)
    assert store.acquire_slot("s", "t2", "w2", 2, T0 + 1)
    assert not store.acquire_slot("s", "t3", "w1", 2, T0 + 2)
    assert store.acquire_slot("other", "t3", "w1", 2, T0 + 2)
    assert [(lease.holder, lease.owner) for lease in store.slot_holders("s")] == [("t1", "w1"), ("t2", "w2")]
    store.release_slot("s", "t1")
    assert store.acquire_slot("s", "t3", "w1", 2, T0 + 3)
    assert [lease.holder for lease in store.slot_holders("s")] == ["t2", "t3"]


def test_a_holder_has_one_slot_and_only_its_owner_gets_it_again(store: LimitStore) -> None:
    assert store.acquire_slot("s", "t1", "w1", 2, T0)
    assert store.acquire_slot("s", "t1", "w1", 2, T0 + 1)  # the same worker asking again
    assert not store.acquire_slot("s", "t1", "w2", 2, T0 + 1)  # a duplicate delivery elsewhere
    store.release_slot("s", "t1", "w1")  # w1 died: its lease is evicted
    assert store.acquire_slot("s", "t1", "w2", 2, T0 + 5)
    (lease,) = store.slot_holders("s")
    assert (lease.holder, lease.owner, lease.since) == ("t1", "w2", pytest.approx(T0 + 5))


def test_releasing_with_an_owner_only_evicts_that_owners_lease(store: LimitStore) -> None:
    assert store.acquire_slot("s", "t1", "w2", 1, T0)
    store.release_slot("s", "t1", "w1")  # w1 is dead, but the lease is w2's
    assert [lease.holder for lease in store.slot_holders("s")] == ["t1"]
    store.release_slot("s", "t1", "w2")
    assert store.slot_holders("s") == []
    store.release_slot("s", "unknown")  # releasing twice (or never held) is harmless


def test_concurrent_acquires_grant_exactly_the_limit(store: LimitStore) -> None:
    granted: list[str] = []
    lock = threading.Lock()

    def take(n: int) -> None:
        if store.acquire_slot("s", f"t{n}", f"w{n}", 3, T0):
            with lock:
                granted.append(f"t{n}")

    threads = [threading.Thread(target=take, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3
    assert sorted(lease.holder for lease in store.slot_holders("s")) == sorted(granted)


def test_a_sqlite_file_whose_rate_log_predates_starts_opens_and_counts_its_entries_as_starts(
    tmp_path: Path,
) -> None:
    """A decortask.db written by the store primitives before `started` existed (cf89520) stopped every
    later decortask at open with `no such column: started`."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE decortask_rates (bucket TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL,"
            " PRIMARY KEY (bucket, member))"
        )
        conn.execute("CREATE INDEX decortask_rate_scores ON decortask_rates (bucket, score)")
        conn.executemany(
            "INSERT INTO decortask_rates VALUES (?, ?, ?)",
            [(FIVE_PER_SECOND.name, f"old{i}", T0) for i in range(5)],
        )
    conn.close()
    store = open_store(f"sqlite:///{path}")
    assert isinstance(store, LimitStore)
    try:
        assert store.reserve_rate("new", [FIVE_PER_SECOND], T0 + 0.5) == T0 + 1  # the window is full
    finally:
        store.close()
