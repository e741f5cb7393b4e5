"""What do `task_log` lines cost a draining worker? (issue 12: three lines per task keep >= 80% of the rate)

    python benchmarks/log_lines.py --store sqlite --tasks 3000 --rounds 3
    python benchmarks/log_lines.py --store redis --source /path/to/other/checkout   # before/after

Each run starts one `decortask worker -c 8` on a fresh SQLite file (broker and store) or a fresh Redis
namespace (broker and store), waits for its heartbeat, reads its CPU time, enqueues N tasks in one batch
and waits until the store counts N SUCCESS records. The drain rate is N over the span from the first
task's start to the last one's end (records' own times: the worker's start-up and the enqueue before the
first task are left out); the CPU per task is the worker process's CPU time (user + system, all threads)
over the drain, divided by N. Rounds alternate the order of the two tasks, a no-op and the no-op after three
`task_log()` lines, so drift on a shared machine hits both; medians are printed with the ratio
log / no-log. `--source` measures the decortask package of another checkout (its worker runs it too).
Loopback servers only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# db 11: benchmarks/run.py flushes db 14 (BENCH_REDIS_URL) between its runs.
REDIS_URL = os.environ.get("LOG_LINES_REDIS_URL", "redis://127.0.0.1:6379/11")
KINDS = ("noop", "log3")
TICKS = os.sysconf("SC_CLK_TCK")


def _define_tasks() -> dict[str, object]:
    from decortask import task, task_log

    @task(name="log_lines_bench.noop")
    def noop(n: int) -> int:
        return n

    @task(name="log_lines_bench.log3")
    def log3(n: int) -> int:
        for step in range(3):
            task_log(f"step {step}", n=n)
        return n

    return {"noop": noop, "log3": log3}


# The worker imports this file as `log_lines` (-A), which registers the tasks.
TASKS = _define_tasks() if __name__ != "__main__" else {}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _drain(store: str, kind: str, tasks: int, workdir: Path, source: Path) -> tuple[float, float]:
    """(tasks per second, worker CPU ms per task) of one drain."""
    from decortask import Decortask
    from decortask.states import TaskStatus
    from decortask.store.base import TaskQuery

    token = uuid.uuid4().hex[:8]
    if store == "sqlite":
        broker_url = store_url = f"sqlite:///{workdir}/{token}.db"
    else:
        broker_url, store_url = REDIS_URL, f"{REDIS_URL}?namespace=bench-log-{token}"
    queue = f"log-bench-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue, set_default=False)
    app.store.count_schedule()  # creates the SQLite file before the worker opens it
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{HERE}"}
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "log_lines", "-Q", queue, "-c", "8",
        "--broker-url", broker_url, "--store-url", store_url, "-l", "WARNING",
    ]  # fmt: skip
    worker = subprocess.Popen(
        command, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not app.store.heartbeats():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the worker did not start within 60 s")
            time.sleep(0.05)
        cpu_before = _cpu_seconds(worker.pid)
        task = TASKS[kind]
        task.map(range(tasks), app=app)  # type: ignore[attr-defined]
        done = TaskQuery(statuses=frozenset({TaskStatus.SUCCESS}))
        deadline = time.monotonic() + 600
        while app.store.count_tasks(done) < tasks:
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} on {store}: not drained within 600 s")
            time.sleep(0.05)
        cpu = _cpu_seconds(worker.pid) - cpu_before
        records = app.store.list_tasks(TaskQuery(limit=tasks))
        first = min(r.started_at or 0.0 for r in records)
        last = max(r.finished_at or 0.0 for r in records)
        if kind == "log3":
            sample = app.store.get(records[0].id)
            assert sample is not None and len(sample.logs) == 3, "a log3 task should have stored three lines"
        return tasks / (last - first), 1000 * cpu / tasks
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        if store == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for pattern in (f"bench-log-{token}:*", f"*{queue}*"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", type=Path, default=HERE.parent, help="checkout whose decortask to run")
    args = parser.parse_args()
    source = args.source.resolve()
    sys.path.insert(0, str(source))
    global TASKS
    TASKS = _define_tasks()
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpus: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for kind in KINDS if round_ % 2 == 0 else tuple(reversed(KINDS)):
                rate, cpu = _drain(args.store, kind, args.tasks, Path(workdir), source)
                rates[kind].append(rate)
                cpus[kind].append(cpu)
                print(f"round {round_ + 1} {kind:<5} {rate:7.0f} tasks/s  {cpu:5.3f} ms CPU/task", flush=True)
    noop, log3 = (statistics.median(rates[kind]) for kind in KINDS)
    print(f"\n{args.store}, {args.tasks} tasks, 1 worker x 8 threads, {source}, median of {args.rounds}:")
    for kind in KINDS:
        print(
            f"  {kind:<5} {statistics.median(rates[kind]):7.0f} tasks/s  {statistics.median(cpus[kind]):5.3f} ms CPU/task"
        )
    print(f"  ratio log3/noop {log3 / noop:.2f}")


if __name__ == "__main__":
    main()
