"""decortask.clock: the test-only skew of a process's clock, and judging other workers' heartbeats without
trusting their clocks (the multi-host harness, tests/test_multihost.py, runs both on real hosts)."""

from __future__ import annotations

import os
import subprocess
import sys

from workers import REPO

from decortask.clock import HeartbeatWatch

LEASE = 5.0


class Clocks:
    """A monotonic clock and this host's wall clock, moved by hand."""

    def __init__(self, wall: float = 1_000_000.0) -> None:
        self.mono = 0.0
        self.wall_now = wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_now += seconds

    def watch(self) -> HeartbeatWatch:
        return HeartbeatWatch(LEASE, monotonic=lambda: self.mono, wall=lambda: self.wall_now)


def test_a_worker_whose_clock_runs_behind_by_more_than_a_lease_stays_alive_while_it_beats() -> None:
    clocks = Clocks()
    watch = clocks.watch()
    behind = 7.0  # its stamps look 7 s old here, more than the lease, as soon as they are written
    for _ in range(20):
        assert watch.alive("w", clocks.wall_now - behind)
        clocks.advance(1.25)


def test_a_worker_whose_clock_runs_ahead_is_dead_one_lease_after_its_stamp_stops_changing() -> None:
    clocks = Clocks()
    watch = clocks.watch()
    last = clocks.wall_now + 30.0  # a stamp from the future: comparing clocks would call it alive for 35 s
    assert watch.alive("w", last)
    clocks.advance(LEASE - 0.1)
    assert watch.alive("w", last)
    clocks.advance(0.1)
    assert not watch.alive("w", last)
    clocks.advance(1.0)
    assert watch.alive("w", last + 1.0)  # it beats again: alive again


def test_a_stamp_seen_first_is_dead_only_when_older_than_any_skew_allowed() -> None:
    clocks = Clocks()
    watch = clocks.watch()
    assert not watch.alive("long-gone", clocks.wall_now - 2 * LEASE)
    assert not watch.alive("long-gone", clocks.wall_now - 2 * LEASE)  # and stays so
    assert not watch.alive("never-beat", None)
    behind = clocks.wall_now - 1.5 * LEASE
    assert watch.alive("behind", behind)  # perhaps a clock behind: watched first
    clocks.advance(LEASE)
    assert not watch.alive("behind", behind)  # unchanged for a lease


def test_decortask_clock_skew_seconds_moves_now_and_a_bad_value_says_what_to_do() -> None:
    code = "import time, decortask.clock as c; print(round(c.now() - time.time()))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DECORTASK_CLOCK_SKEW_SECONDS": "-3.5"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() in ("-3", "-4"), done.stderr
    env["DECORTASK_CLOCK_SKEW_SECONDS"] = "three"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DECORTASK_CLOCK_SKEW_SECONDS must be a number of seconds, not 'three'" in done.stderr
