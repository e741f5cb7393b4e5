"""Does the event feed slow the workers? Drain time of N tasks by two worker processes, three ways.

    python benchmarks/events_drain.py --store sqlite --tasks 2000 --rounds 3
    python benchmarks/events_drain.py --store redis --tasks 2000 --rounds 3

For each round, in turn: events off; events on with nobody reading; events on with a subscriber process that
sleeps 1 s per event (issue 15: "a subscriber that sleeps 1 s per event does not slow the workers"). Each run
starts two `decortask worker -c 4` processes on a fresh SQLite file (broker and store) or a fresh Redis
namespace, waits until both heartbeat, then times enqueueing N no-op tasks (`map`) until the store counts N
SUCCESS records. Prints every run (wall seconds, and the CPU seconds the two worker processes used in all,
start-up included) and the median per mode, with its ratio to events off. On a busy machine the CPU time is
the steadier measure. Loopback servers only.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from decortask import Decortask, EventSubscriber, task
from decortask.states import TaskStatus
from decortask.store.base import TaskQuery

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
MODES = ("off", "on", "on+slow subscriber")


@task(name="events_bench.noop")
def noop(n: int) -> int:
    return n


def _urls(store: str, workdir: Path) -> tuple[str, str, str]:
    token = uuid.uuid4().hex[:8]
    if store == "sqlite":
        url = f"sqlite:///{workdir}/{token}.db"
        return url, url, token
    return REDIS_URL, f"{REDIS_URL}?namespace=bench-events-{token}", token


def _drain(store: str, mode: str, tasks: int, workdir: Path) -> tuple[float, float]:
    """(wall seconds of the drain, CPU seconds of the two worker processes)."""
    broker_url, store_url, token = _urls(store, workdir)
    events = mode != "off"
    app = Decortask(broker_url, store_url, default_queue=f"events-bench-{token}", events=events)
    app.store.count_schedule()  # creates the SQLite file before the workers open it
    env = {**os.environ, "DECORTASK_EVENTS": "1" if events else "0"}
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "benchmarks.events_drain", "-Q",
        app.settings.default_queue, "-c", "4", "--broker-url", broker_url, "--store-url", store_url,
        "-l", "WARNING",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    subscriber = None
    if mode == "on+slow subscriber":
        subscriber = subprocess.Popen(
            [sys.executable, __file__, "--slow-subscriber", store_url], cwd=REPO, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while len(app.store.heartbeats()) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not start within 60 s")
            time.sleep(0.05)
        done = TaskQuery(statuses=frozenset({TaskStatus.SUCCESS}))
        started = time.perf_counter()
        noop.map(range(tasks), app=app)
        while (succeeded := app.store.count_tasks(done)) < tasks:
            if time.perf_counter() - started > 300:
                raise SystemExit(f"{mode}: only {succeeded} of {tasks} tasks succeeded within 300 s")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        _stop(workers)  # the subscriber is still running: only the workers' CPU is counted
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return wall, cpu
    finally:
        _stop([*workers, *([subscriber] if subscriber else [])])
        if store == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"bench-events-{token}:*", count=1000))
            if keys:
                client.delete(*keys)
        app.close()


def _drain_in_a_process(store: str, mode: str, tasks: int, workdir: str) -> tuple[float, float]:
    command = [
        sys.executable, __file__, "--one", mode, "--store", store, "--tasks", str(tasks), "--workdir", workdir,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stdout}{done.stderr}")
    seconds, cpu = done.stdout.split()[-2:]
    return float(seconds), float(cpu)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _slow_subscriber(store_url: str) -> None:
    """Reads the feed from now on and sleeps 1 s per event, until terminated."""
    app = Decortask(store_url, store_url, set_default=False)
    for _event in EventSubscriber(app, since="now").events():
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-subscriber", metavar="STORE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slow_subscriber:
        _slow_subscriber(args.slow_subscriber)
        return
    if args.one:  # one drain, in a process of its own: nothing of one run's app lingers into the next
        seconds, cpu = _drain(args.store, args.one, args.tasks, Path(args.workdir))
        print(f"{seconds} {cpu}")
        return
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else tuple(reversed(MODES)):  # alternate: drift hits all
                seconds, cpu = _drain_in_a_process(args.store, mode, args.tasks, workdir)
                results[mode].append(seconds)
                cpus[mode].append(cpu)
                print(
                    f"round {round_ + 1} {mode:<20} {seconds:6.2f} s  {args.tasks / seconds:7.0f} tasks/s  "
                    f"workers' CPU {cpu:6.2f} s",
                    flush=True,
                )
    base, base_cpu = statistics.median(results["off"]), statistics.median(cpus["off"])
    print(f"\n{args.store}, {args.tasks} tasks, 2 workers x 4 threads, median of {args.rounds}:")
    for mode in MODES:
        median, cpu = statistics.median(results[mode]), statistics.median(cpus[mode])
        print(
            f"  events {mode:<20} {median:6.2f} s ({median / base - 1:+.1%} vs off)   "
            f"workers' CPU {cpu:6.2f} s ({cpu / base_cpu - 1:+.1%} vs off)"
        )


if __name__ == "__main__":
    main()
