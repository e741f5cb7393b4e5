"""How long purging expired records holds a SQLite store's write lock while a worker drains (issue 12).

    .venv/bin/python benchmarks/expiry_lock.py [--records 100000] [--tasks 30000] [--single]

Fills one SQLite file (store and embedded broker) with `--records` expired FAILED records, each with a
log line, queues `--tasks` no-op tasks, starts a real `decortask worker` on that file and lets it drain
alone for a while (the baseline), then runs `purge_expired` from this process while the worker keeps
draining. Reported:

- each purge transaction's own lock hold (`SQLiteStore.on_purge_batch`: from taking the write lock to the
  end of the commit);
- independently, the latency of a concurrent writer: another process writing one row (a heartbeat, its
  own write transaction) every 5 ms, during the baseline, the purge's deletes and its vacuum steps;
- the worker's drain rate (tasks reaching SUCCESS per second) during the baseline and during the purge;
- the file: size, pages and free pages before and after.

`--single` purges in one transaction, as the store did before issue 12, for comparison (the vacuum steps
that follow are still bounded). The expired records expire an hour ahead and are purged as of two hours
ahead, so the worker's own periodic purge never takes them first. No timing here is asserted anywhere;
the target is a longest hold of 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from decortask.states import TaskStatus
from decortask.store import LogLine, TaskRecord
from decortask.store.sqlite import SQLiteStore
from decortask.store.sqlite_expiry import ExpiryLimits, PurgeBatch

REPO = Path(__file__).resolve().parent.parent
QUEUE = "expiry_bench"
TASKS_MODULE = """
import os
from decortask import Decortask, task

app = Decortask(broker_url=os.environ["EXPIRY_URL"], store_url=os.environ["EXPIRY_URL"], default_queue="{queue}")


@task(name="expiry_bench.noop")
def noop() -> None:
    pass
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="expired records to purge")
    parser.add_argument("--tasks", type=int, default=30_000, help="no-op tasks queued for the worker")
    parser.add_argument("--baseline", type=float, default=6.0, help="seconds the worker drains alone first")
    parser.add_argument("--single", action="store_true", help="purge in one transaction (before issue 12)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    defaults = ExpiryLimits()
    parser.add_argument("--batch-rows", type=int, default=defaults.batch_rows)
    parser.add_argument("--batch-ms", type=float, default=defaults.batch_seconds * 1000)
    parser.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows)
    parser.add_argument("--vacuum-pages", type=int, default=defaults.vacuum_pages)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="decortask-expiry-"))
    db = workdir / "expiry.db"
    url = f"sqlite:///{db}"
    (workdir / "expiry_bench_tasks.py").write_text(textwrap.dedent(TASKS_MODULE.format(queue=QUEUE)))
    env = {**os.environ, "EXPIRY_URL": url, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}"}

    store = SQLiteStore(url)
    now = time.time()
    started = time.perf_counter()
    fill(store, options.records, expires_at=now + 3600)
    print(f"filled {options.records} expired records in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    enqueue = "from expiry_bench_tasks import noop; import sys; noop.map([()] * int(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", enqueue, str(options.tasks)], env=env, cwd=workdir, check=True)
    print(f"queued {options.tasks} tasks in {time.perf_counter() - started:.1f} s")
    before = file_state(db)

    worker = subprocess.Popen(
        [sys.executable, "-m", "decortask", "worker", "-A", "expiry_bench_tasks", "-Q", QUEUE, "-c", "8",
         "-l", "WARNING", "--no-periodic"],
        cwd=workdir, env=env, start_new_session=True,
    )  # fmt: skip
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE_LOOP, url],
        cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert probe.stdin is not None and probe.stdout is not None
    try:
        wait_for_drain_start(db)
        probe.stdin.write("mark baseline\n")
        probe.stdin.flush()
        base_start, base_done = time.perf_counter(), succeeded(db)
        time.sleep(options.baseline)
        base_rate = (succeeded(db) - base_done) / (time.perf_counter() - base_start)

        probe.stdin.write("mark deletes\n")
        probe.stdin.flush()
        batches: list[PurgeBatch] = []

        def heard(batch: PurgeBatch) -> None:
            if batch.kind == "vacuum" and not any(b.kind == "vacuum" for b in batches):
                probe.stdin.write("mark vacuum\n")  # the probe files what follows under the vacuum steps
                probe.stdin.flush()
            batches.append(batch)

        store.on_purge_batch = heard
        store.expiry_limits = ExpiryLimits(
            batch_rows=options.batch_rows,
            batch_seconds=options.batch_ms / 1000,
            chunk_rows=options.chunk_rows,
            vacuum_pages=options.vacuum_pages,
        )
        if options.single:
            store.expiry_limits = ExpiryLimits(batch_rows=10**9, batch_seconds=float("inf"))
        purge_start, purge_done = time.perf_counter(), succeeded(db)
        removed = store.purge_expired(now + 7200)
        purge_seconds = time.perf_counter() - purge_start
        purge_rate = (succeeded(db) - purge_done) / purge_seconds
        probe.stdin.write("mark after\n")
        probe.stdin.flush()
        time.sleep(0.5)
        probe.stdin.write("stop\n")
        probe.stdin.flush()
        probed = json.loads(probe.stdout.read())
        left = options.tasks - succeeded(db)
    finally:
        for process in (probe,):
            if process.poll() is None:
                process.kill()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
    store.close()
    checkpoint(db)
    after = file_state(db)

    deletes = [b for b in batches if b.kind == "delete"]
    vacuums = [b for b in batches if b.kind == "vacuum"]
    print()
    print(f"purge: {removed} records in {purge_seconds:.2f} s, {len(deletes)} delete transactions"
          f"{' (one transaction: --single)' if options.single else ''}, {len(vacuums)} vacuum steps"
          f" ({sum(b.rows for b in vacuums)} pages returned)")  # fmt: skip
    print(f"  lock held per delete transaction: {summary([b.held for b in deletes])}")
    print(f"  lock held per vacuum step:        {summary([b.held for b in vacuums])}")
    print(f"  longest hold: {max(b.held for b in batches) * 1000:.1f} ms (target <= 100 ms)")
    for phase in ("baseline", "deletes", "vacuum"):
        print(f"concurrent single-row write ({phase}): {summary(probed.get(phase, []))}")
    print(f"worker drain: {base_rate:.0f} tasks/s alone, {purge_rate:.0f} tasks/s during the purge"
          f" ({purge_rate / base_rate:.0%}); {left} tasks still queued at the end")  # fmt: skip
    print(f"file before: {before}")
    print(f"file after:  {after}")
    if not options.keep:
        shutil.rmtree(workdir)  # the database, its WAL and the workers' liveness lock directory
    else:
        print(f"kept {workdir}")


# Another process: one single-row write transaction (a heartbeat) every 5 ms. Reads "mark PHASE" lines
# on stdin to file the following latencies under PHASE, and prints them all as JSON after "stop".
PROBE_LOOP = """
import json, sys, threading, time
from decortask.store.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
phases, current, stop = {}, [None], threading.Event()

def read_marks():
    for line in sys.stdin:
        word = line.split()
        if word[0] == "stop":
            break
        current[0] = word[1]
        phases.setdefault(word[1], [])
    stop.set()

threading.Thread(target=read_marks, daemon=True).start()
while not stop.is_set():
    started = time.perf_counter()
    store.heartbeat("expiry-probe", time.time())
    took = time.perf_counter() - started
    if current[0] in phases:
        phases[current[0]].append(took)
    time.sleep(max(0.0, 0.005 - took))
print(json.dumps(phases))
"""


def fill(store: SQLiteStore, count: int, expires_at: float) -> None:
    """`count` FAILED records expiring at `expires_at`, each with one log line, in transactions of 5,000."""
    status = TaskStatus.FAILED  # not SUCCESS: the drain's progress is counted by its SUCCESS records
    for start in range(0, count, 5000):
        store.create_many(
            [
                TaskRecord(
                    id=f"expired-{n}", name="expiry_bench.old", queue="old", status=status,
                    created_at=expires_at - 7200, updated_at=expires_at - 7200, expires_at=expires_at,
                    error_type="ValueError", error_message="an old failure " * 8,
                    logs=[LogLine(ts=expires_at - 7200, message=f"old line {n} " * 10)],
                )
                for n in range(start, min(start + 5000, count))
            ]
        )  # fmt: skip


def succeeded(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM decortask_tasks WHERE status = 'SUCCESS'").fetchone()[0]
        )


def wait_for_drain_start(db: Path) -> None:
    deadline = time.monotonic() + 120
    while succeeded(db) < 100:
        if time.monotonic() > deadline:
            raise SystemExit("the worker completed no tasks within 120 s")
        time.sleep(0.1)


def file_state(db: Path) -> str:
    with sqlite3.connect(db, timeout=30) as conn:
        pages, free, size, vacuum = (
            int(conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_count", "freelist_count", "page_size", "auto_vacuum")
        )
    wal = db.with_name(db.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    return (
        f"{db.stat().st_size / 1e6:.1f} MB on disk (+{wal_size / 1e6:.1f} MB WAL), {pages} pages of {size} B "
        f"({pages * size / 1e6:.1f} MB), {free} free, auto_vacuum={vacuum}"
    )


def checkpoint(db: Path) -> None:
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"n={len(ms)} median {statistics.median(ms):.2f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms, "
        f"{sum(v > 100 for v in ms)} over 100 ms"
    )


if __name__ == "__main__":
    main()
