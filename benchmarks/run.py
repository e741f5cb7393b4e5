"""Benchmark decortask against Celery, Dramatiq and Huey on the machine's own brokers.

    python benchmarks/run.py --quick                          # ~8 minutes on 2 cores; writes RESULTS.md
    python benchmarks/run.py --quick --measures roundtrip,cpu --reps 1   # a subset, to iterate

Creates `benchmarks/.venv` (decortask in editable mode plus `requirements.txt`) on first use and re-runs
itself there, so none of the other systems is ever a dependency of decortask. Each system runs its real
worker as a subprocess with 8 threads in one process, on the same broker, with the same no-op task
(`systems/tracker.py`). Runs are interleaved (A B C A B C ...), repeated, and reported as medians with
the ratio decortask / other for each measure, against issue 12's targets.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from report import BROKER_LABELS, STORE_NOTE, Run, fmt, load, table, versions, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
RABBIT_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")  # db 14: the benchmarks' own
#: Celery's and Dramatiq's result backend for the round trip (flushed with the Redis broker's db).
RESULTS_URL = os.environ.get("BENCH_RESULTS_URL", REDIS_URL)
#: decortask's Redis store, for the measures that say "Redis store" (the others use the default SQLite one).
REDIS_STORE_URL = f"{REDIS_URL}?namespace=bench"
#: Directories put before the editable install on the workers' and clients' path (--source).
SOURCE: list[str] = []
#: Held for the whole run: two runs at once would flush each other's Redis db and share the cores.
LOCK_PATH = Path(tempfile.gettempdir()) / "decortask-bench.lock"
#: Which systems run on which broker; the first is always decortask, the others are compared with it.
SYSTEMS = {
    "amqp": ["decortask", "celery", "dramatiq"],
    "redis": ["decortask", "celery", "dramatiq"],
    "sqlite": ["decortask", "huey"],
}
#: Each run's own queue names (`bench_<token>_decortask`, ...): a worker another run or a profile left on
#: RabbitMQ never takes this run's messages.
QUEUE_PREFIX = f"bench_{secrets.token_hex(3)}_"
#: Queue names each system uses on RabbitMQ (deleted before every phase and at the end).
RABBIT_QUEUES = [
    QUEUE_PREFIX + name
    for name in ("decortask", "decortask.dlq", "celery", "dramatiq", "dramatiq.DQ", "dramatiq.XQ")
]
PACKAGES = ["decortask", "kombu", "amqp", "redis", "celery", "dramatiq", "pika", "huey"]


# -- the benchmark environment --------------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-execute inside benchmarks/.venv, creating it first if it is missing."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    installed = VENV / ".installed"  # written last: a half-finished or outdated install is done again
    # decortask's own pyproject.toml counts too: a dependency it gains (cronsim) must reach an existing venv.
    project = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    pins = "\n".join([*sorted(versions_of_requirements()), f"pyproject.toml {project}"]) + "\n"
    if not installed.exists() or installed.read_text() != pins:
        print(f"creating the benchmark environment in {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "-e",
                str(REPO),
                "-r",
                str(HERE / "requirements.txt"),
            ],
            check=True,
        )
        installed.write_text(pins)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def versions_of_requirements() -> list[str]:
    return [line.strip() for line in (HERE / "requirements.txt").read_text().splitlines() if "==" in line]


# -- processes ------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its children (VmRSS from /proc), in MiB."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


#: Seconds a worker has to exit after SIGTERM once its measures are taken.
STOP_GRACE = 3.0


class Worker:
    """One system's real worker process (stopped by pid, children included)."""

    #: system -> its worker's argv, asked once per run (it depends only on the run's queue names)
    commands: dict[str, list[str]] = {}

    def __init__(self, system: str, env: dict[str, str], log: Path) -> None:
        if system not in self.commands:
            module = f"systems.bench_{system}"
            command = run_python(
                ["-c", f"import {module} as m, json; print(json.dumps(m.worker_command()))"], env
            )
            self.commands[system] = json.loads(command)
        argv = [sys.executable, *self.commands[system]]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for whatever is left after a short grace: the measures are taken by then,
        and Celery's warm shutdown alone takes ~10 s."""
        members = process_tree(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_GRACE)
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def run_python(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def client(system: str, action: str, count: int, env: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run_python(["client.py", system, action, str(count)], env))
    return result


# -- brokers --------------------------------------------------------------------------------------------


def purge(broker: str) -> None:
    """Empty the broker's benchmark queues and the results db (SQLite phases get fresh files instead)."""
    if broker in ("redis", "amqp"):
        import redis

        for url in {REDIS_URL, RESULTS_URL}:
            redis.Redis.from_url(url).flushdb()
    if broker == "amqp":
        import kombu

        with kombu.Connection(RABBIT_URL) as conn:
            for name in RABBIT_QUEUES:
                channel = conn.channel()
                with contextlib.suppress(Exception):  # absent queues close the channel: a new one each time
                    channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    channel.close()


def server_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        import redis

        versions["Redis server"] = str(redis.Redis.from_url(REDIS_URL).info("server")["redis_version"])
    with contextlib.suppress(Exception):
        import kombu

        with kombu.Connection(RABBIT_URL) as conn:
            conn.connect()
            props = conn.connection.server_properties
            versions["RabbitMQ server"] = str(props.get("version", "?"))
    return versions


# -- one run of one system ------------------------------------------------------------------------------


@dataclass
class Phase:
    """Environment of one phase: broker URL, fresh SQLite files, the task, the tracker's expectations.

    `task` is decortask's task for `enqueue` (noop, transient, log3); `store` overrides decortask's
    default SQLite store; `results` turns Celery's and Dramatiq's result backends on.
    """

    system: str
    broker: str
    workdir: Path
    expected: int = 0
    task: str = "noop"
    store: str | None = None
    results: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        url = {"amqp": RABBIT_URL, "redis": REDIS_URL}.get(self.broker)
        broker_db = f"sqlite:///{self.workdir / 'broker.db'}"
        # decortask's default store is SQLite; on the embedded broker, the same file as the broker.
        store = self.store or (broker_db if url is None else f"sqlite:///{self.workdir / 'store.db'}")
        env = dict(os.environ)
        env.update(
            {
                # --source: another checkout's decortask (e.g. a git worktree of an older commit) before ours
                "PYTHONPATH": os.pathsep.join([*SOURCE, str(HERE)]),
                "BENCH_BROKER": url or broker_db,
                "BENCH_STORE": store,
                "BENCH_TASK": self.task,
                "BENCH_QUEUE_PREFIX": QUEUE_PREFIX,
                "BENCH_SQLITE": str(self.workdir / "huey.db"),
                "BENCH_EXPECTED": str(self.expected),
                "BENCH_OUT": str(self.workdir / "drained.json"),
                "BENCH_RESULTS_URL": RESULTS_URL,
            }
        )
        if self.results:
            env["BENCH_RESULTS"] = "1"
        else:
            env.pop("BENCH_RESULTS", None)
        self.env = env


@dataclass(frozen=True)
class Sizes:
    messages: int
    roundtrips: int
    reps: int
    drain_timeout: float


#: What --measures accepts; `drain` and `cpu` come from the same drain, `enqueue` fills its queue.
MEASURE_NAMES = ("enqueue", "drain", "cpu", "roundtrip", "rss", "batch", "nopersist", "log3", "expiry")
#: What benchmarks/expiry_lock.py printed, for RESULTS.md (the expiry measure runs once per run).
EXPIRY_REPORT: list[str] = []


def idle_phase(system: str, broker: str, sizes: Sizes, scratch: Path, log: Path, measures: set[str]) -> Run:
    """A started worker on an empty queue: its idle memory, then round trips waiting for the result."""
    out: Run = {}
    purge(broker)
    phase = Phase(system, broker, scratch / "idle", results="roundtrip" in measures)
    worker = Worker(system, phase.env, log)
    try:
        client(system, "ready", 120, phase.env)
        if "rss" in measures:
            time.sleep(1.0)
            out["rss_idle"] = rss_mib(worker.pid)
        if "roundtrip" in measures:
            trips = client(system, "roundtrip", sizes.roundtrips, phase.env)
            out["p50"], out["p99"] = trips["p50"] * 1000, trips["p99"] * 1000
    finally:
        worker.stop()
    return out


def drain_phase(
    system: str,
    broker: str,
    sizes: Sizes,
    workdir: Path,
    log: Path,
    task: str = "noop",
    store: str | None = None,
) -> Run:
    """Per-call enqueue with no worker running, then the drain of that queue by a worker started after.

    The drain and the worker's CPU per task are taken inside the worker, from the first to the last
    completion (systems/tracker.py); the worker is stopped only once every task has completed.
    """
    purge(broker)
    phase = Phase(system, broker, workdir, expected=sizes.messages + 1, task=task, store=store)
    sent = client(system, "enqueue", sizes.messages, phase.env)
    out: Run = {"enqueue": sent["rate"], "published": sent["published_rate"], "drain": None, "cpu": None}
    out["cpu_tree"] = None  # stays None when the drain does not end
    marker = Path(phase.env["BENCH_OUT"])
    worker = Worker(system, phase.env, log)
    try:
        deadline = time.monotonic() + sizes.drain_timeout
        while not marker.exists() and time.monotonic() < deadline and worker.proc.poll() is None:
            time.sleep(0.05)
        if marker.exists():
            done = json.loads(marker.read_text())
            tasks, span = done["count"] - 1, done["last"] - done["first"]
            out["drain"] = tasks / span if span > 0 else None
            out["cpu"] = (done["cpu_last"] - done["cpu_first"]) / tasks * 1e6
            out["cpu_tree"] = (done["tree_last"] - done["tree_first"]) / tasks * 1e6
        elif worker.proc.poll() is not None:
            code = worker.proc.returncode
            print(
                f"  ! {system} ({task}) on {broker}: the worker exited ({code}) before the drain ended (see {log})"
            )
        else:
            print(
                f"  ! {system} ({task}) on {broker} did not drain within {sizes.drain_timeout:g} s (see {log})"
            )
        out["rss_after"] = rss_mib(worker.pid)
    finally:
        worker.stop()
    purge(broker)
    return out


def expiry_phase(log: Path) -> Run:
    """Expiring 100,000 records while a worker drains the same SQLite file: benchmarks/expiry_lock.py's
    longest write-lock hold of the purge, and the drain during the purge against the drain alone."""
    script = HERE / "expiry_lock.py"
    if SOURCE or not script.exists():  # the script's worker always runs this checkout's decortask
        EXPIRY_REPORT.append("not measured: " + ("--source given" if SOURCE else f"{script} is missing"))
        return {}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=HERE, capture_output=True, text=True, timeout=900, check=False
    )
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    EXPIRY_REPORT.extend(
        lines if done.returncode == 0 else [*lines[-5:], f"failed ({done.returncode}), see {log}"]
    )
    hold = re.search(r"longest hold: ([\d.]+) ms", done.stdout)
    drain = re.search(r"worker drain: (\d+) tasks/s alone, (\d+) tasks/s during the purge", done.stdout)
    return {
        "expiry_hold": float(hold.group(1)) if hold else None,
        "expiry_drain": 100 * int(drain.group(2)) / int(drain.group(1))
        if drain and int(drain.group(1))
        else None,
    }


def prefixed(prefix: str, run: Run, keys: tuple[str, ...]) -> Run:
    return {f"{prefix}{key}": run.get(key) for key in keys}


def one_run(
    system: str, broker: str, sizes: Sizes, scratch: Path, log: Path, measures: set[str], rep: int
) -> Run:
    """Every selected measure of one system on one broker, each phase on a purged broker."""
    out: Run = {}
    if measures & {"roundtrip", "rss"}:
        out |= idle_phase(system, broker, sizes, scratch, log, measures)
    if system == "decortask" and "batch" in measures:
        purge(broker)
        out["batch"] = client(system, "batch", sizes.messages, Phase(system, broker, scratch / "batch").env)[
            "rate"
        ]
    if measures & {"enqueue", "drain", "cpu"}:  # rss_after comes with the drain
        out |= drain_phase(system, broker, sizes, scratch / "drain", log)
    if system == "decortask" and "nopersist" in measures and broker != "sqlite":
        run = drain_phase(system, broker, sizes, scratch / "transient", log, task="transient")
        out |= prefixed("np_", run, ("drain", "cpu"))
    if system == "decortask" and "log3" in measures and broker != "amqp":
        store = REDIS_STORE_URL if broker == "redis" else None  # SQLite: the embedded broker's own file
        order = ["noop", "log3"] if rep % 2 == 0 else ["log3", "noop"]  # alternated: drift cancels out
        for task in order:
            run = drain_phase(system, broker, sizes, scratch / task, log, task=task, store=store)
            out |= prefixed("nolog_" if task == "noop" else "log3_", run, ("drain", "cpu"))
    if system == "decortask" and "expiry" in measures and broker == "sqlite" and rep == 0:
        out |= expiry_phase(log)
    return out


# -- reporting (the table and RESULTS.md are report.py's) -------------------------------------------


def measured_source() -> str:
    """Which decortask was measured: the checkout and its commit, and whether decortask/ had local changes."""
    root = Path(SOURCE[0]) if SOURCE else REPO
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "decortask"], capture_output=True, text=True
    )
    changes = " plus uncommitted changes in decortask/" if dirty.stdout.strip() else ""
    return f"{root} at {commit.stdout.strip() or '?'}{changes}"


@contextlib.contextmanager
def exclusive_run() -> Any:
    """One benchmark run at a time on this machine: the others wait (they share queues and cores)."""
    with LOCK_PATH.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another benchmark run to finish (lock {LOCK_PATH}) ...", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def parse_measures(text: str | None) -> set[str]:
    if text is None:
        return set(MEASURE_NAMES)
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(MEASURE_NAMES)
    if unknown:
        raise SystemExit(
            f"unknown measure(s) {', '.join(sorted(unknown))}; choose from {', '.join(MEASURE_NAMES)}"
        )
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes within ~8 minutes")
    parser.add_argument("--brokers", default="amqp,redis,sqlite", help="comma-separated: amqp,redis,sqlite")
    parser.add_argument("--systems", default=None, help="only these systems (comma-separated)")
    parser.add_argument(
        "--measures", default=None, help=f"only these measures (comma-separated): {','.join(MEASURE_NAMES)}"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="a checkout whose decortask/ package to measure instead of this one (e.g. a git worktree of "
        "an older commit, for before/after numbers)",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--messages", type=int, default=None, help="tasks per enqueue/drain measure")
    parser.add_argument("--roundtrips", type=int, default=None, help="sequential round trips per run")
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default: benchmarks/RESULTS.md for a complete run, "
        "else a file in the run's scratch directory)",
    )
    args = parser.parse_args()
    measures = parse_measures(args.measures)
    if args.source:
        source = Path(args.source).resolve()
        if not (source / "decortask" / "__init__.py").exists():
            raise SystemExit(
                f"--source {source} has no decortask/ package; give a checkout of this repository"
            )
        SOURCE.append(str(source))
    ensure_venv()
    sizes = (
        Sizes(messages=1500, roundtrips=300, reps=args.reps, drain_timeout=120)
        if args.quick
        else Sizes(messages=20000, roundtrips=1000, reps=args.reps, drain_timeout=900)
    )
    sizes = Sizes(
        messages=args.messages or sizes.messages,
        roundtrips=args.roundtrips or sizes.roundtrips,
        reps=sizes.reps,
        drain_timeout=sizes.drain_timeout,
    )
    only = set(args.systems.split(",")) if args.systems else None
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    complete = (
        args.measures is None
        and only is None
        and set(brokers) == set(SYSTEMS)
        and args.messages is None
        and args.roundtrips is None
        and not SOURCE
    )
    with exclusive_run():
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        run_began = time.monotonic()
        load_before = load()
        results: dict[str, dict[str, list[Run]]] = {}
        scratch_root = Path(tempfile.mkdtemp(prefix="decortask-bench-"))
        log = scratch_root / "workers.log"
        print(f"decortask: {measured_source()}; worker logs: {log}; load before: {load_before}", flush=True)
        try:
            for broker in brokers:
                systems = [s for s in SYSTEMS[broker] if only is None or s in only]
                results[broker] = {s: [] for s in systems}
                for rep in range(sizes.reps):  # interleaved: A B C, A B C, ...
                    for system in systems:
                        began = time.monotonic()
                        scratch = scratch_root / f"{broker}-{system}-{rep}"
                        try:
                            run = one_run(system, broker, sizes, scratch, log, measures, rep)
                        except Exception as exc:  # one failing system must not lose the others' numbers
                            print(f"  ! {system} on {broker} failed: {exc}", flush=True)
                            run = {}
                        results[broker][system].append(run)
                        shown = ", ".join(f"{k} {fmt(v)}" for k, v in run.items())
                        print(
                            f"{BROKER_LABELS[broker]:8} rep {rep + 1} {system:9} "
                            f"{time.monotonic() - began:5.1f}s  {shown}",
                            flush=True,
                        )
                        shutil.rmtree(scratch, ignore_errors=True)
        finally:
            for broker in [b for b in results if b != "sqlite"]:
                with contextlib.suppress(Exception):
                    purge(broker)
        text, missed = table(results)
        print()
        print(STORE_NOTE)
        print(text)
        if EXPIRY_REPORT:
            print("\nbenchmarks/expiry_lock.py:\n" + "\n".join(f"  {line}" for line in EXPIRY_REPORT))
        if missed:
            print("\nTargets missed:\n" + "\n".join(f"- {m}" for m in missed))
        out = Path(args.out) if args.out else HERE / "RESULTS.md" if complete else scratch_root / "RESULTS.md"
        header = (
            f"`{' '.join(['python benchmarks/run.py', *sys.argv[1:]])}`, started {started}. {sizes.messages:,} "
            f"tasks per enqueue/drain measure, {sizes.roundtrips:,} sequential round trips, {sizes.reps} "
            f"interleaved repetition{'s' if sizes.reps != 1 else ''}, medians; the run took "
            f"{(time.monotonic() - run_began) / 60:.1f} min."
        )
        pkgs = versions(PACKAGES) | server_versions()
        write_results(
            out, text, missed, header, (load_before, load()), pkgs, measured_source(), EXPIRY_REPORT
        )
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
