"""The results table of benchmarks/run.py: medians, ratios and issue 12's targets, met or MISSED."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

#: One run of one system on one broker: measure key -> value (None when it could not be measured).
Run = dict[str, float | None]
BROKER_LABELS = {"amqp": "RabbitMQ", "redis": "Redis", "sqlite": "SQLite"}
SYSTEMS = ("decortask", "celery", "dramatiq", "huey")
OTHERS = SYSTEMS[1:]
#: The decortask store each broker's log3 rows use (the other rows use the default SQLite store).
LOG_STORE = {"redis": "Redis store", "sqlite": "SQLite store"}


@dataclass(frozen=True)
class Row:
    """One line of the table.

    `key` is decortask's measure; the other systems show `base` (their own measure of the same work,
    e.g. their plain drain against decortask's `persist=False` drain), defaulting to `key`.
    """

    key: str
    label: str
    unit: str
    base: str | None = None
    decortask_only: bool = False
    brokers: tuple[str, ...] = ("amqp", "redis", "sqlite")


ROWS = [
    Row("enqueue", "enqueue, per call", "tasks/s"),
    Row("published", "enqueue, until all published", "tasks/s", decortask_only=True),
    Row("batch", "enqueue, batch `map()`", "tasks/s", decortask_only=True),
    Row("drain", "drain, pre-filled queue", "tasks/s"),
    Row(
        "np_drain",
        "drain, `persist=False` no-op (others: their drain)",
        "tasks/s",
        "drain",
        brokers=("amqp", "redis"),
    ),
    Row("p50", "round trip p50, waiting for the result", "ms"),
    Row("p99", "round trip p99, waiting for the result", "ms"),
    Row("cpu", "worker CPU per task, task's process", "us"),
    Row("cpu_tree", "worker CPU per task, all worker processes", "us"),
    Row(
        "np_cpu",
        "worker CPU per task, `persist=False` (others: theirs)",
        "us",
        "cpu",
        brokers=("amqp", "redis"),
    ),
    Row("nolog_drain", "drain, no-log no-op", "tasks/s", decortask_only=True, brokers=("redis", "sqlite")),
    Row(
        "log3_drain",
        "drain, 3 `task_log` lines per task",
        "tasks/s",
        decortask_only=True,
        brokers=("redis", "sqlite"),
    ),
    Row(
        "expiry_hold",
        "expiring 100,000 records: longest write-lock hold",
        "ms",
        decortask_only=True,
        brokers=("sqlite",),
    ),
    Row(
        "expiry_drain",
        "drain during that purge, % of the drain alone",
        "%",
        decortask_only=True,
        brokers=("sqlite",),
    ),
    Row("rss_idle", "worker RSS idle", "MiB"),
    Row("rss_after", "worker RSS after the drain", "MiB"),
]


@dataclass(frozen=True)
class Target:
    """Issue 12's target for one row: decortask against `other`'s `base` measure, or an absolute bound.

    `other` "self" compares with decortask's own `base` measure (log3 against no-log); `other` None
    compares with `factor` itself (an absolute bound in the row's unit).
    """

    factor: float
    higher_is_better: bool
    other: str | None = "celery"
    unit: str = ""

    def text(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        if self.other is None:
            return f"{sign}{self.factor:g} {self.unit}"
        if self.other == "self":
            return f"{sign}{self.factor:.0%} of no-log"
        return f"{sign}{self.factor:g}x {self.other}"


#: Issue 12's "Done when" list, exactly; rows without an entry are shown for information.
TARGETS: dict[tuple[str, str], Target] = {
    ("amqp", "enqueue"): Target(2.0, True),
    ("amqp", "drain"): Target(1.0, True),
    ("amqp", "p50"): Target(1.0, False),
    ("amqp", "np_drain"): Target(1.5, True),
    ("amqp", "cpu"): Target(1.2, False),
    ("amqp", "cpu_tree"): Target(1.2, False),
    ("redis", "enqueue"): Target(2.0, True),
    ("redis", "drain"): Target(1.5, True),
    ("redis", "p50"): Target(1.0, False),
    ("redis", "np_drain"): Target(1.5, True),
    ("redis", "log3_drain"): Target(0.8, True, "self"),
    ("sqlite", "drain"): Target(1.0, True, "huey"),
    ("sqlite", "p50"): Target(2.0, False, None, "ms"),
    ("sqlite", "log3_drain"): Target(0.8, True, "self"),
    ("sqlite", "expiry_hold"): Target(100.0, False, None, "ms"),
}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def verdict(target: Target, mine: float | None, base: float | None) -> str:
    """'met (...)' or 'MISSED (...)', with the ratio for a self comparison; '' when a side is missing."""
    if mine is None or (target.other is not None and base is None):
        return ""
    bound = target.factor if target.other is None else target.factor * (base or 0.0)
    ok = mine >= bound if target.higher_is_better else mine <= bound
    extra = f"; {mine / base:.0%} of no-log" if target.other == "self" and base else ""
    return f"{'met' if ok else 'MISSED'} ({target.text()}){extra}"


def table(results: dict[str, dict[str, list[Run]]]) -> tuple[str, list[str]]:
    """The markdown table (medians over the repetitions) and the list of missed targets."""
    lines = [
        "| broker | measure | decortask | celery | dramatiq | huey | decortask / celery | "
        "decortask / dramatiq | decortask / huey | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    missed: list[str] = []
    for broker, per_system in results.items():
        for row in ROWS:
            if broker not in row.brokers:
                continue
            med: dict[str, float | None] = {}
            for system, runs in per_system.items():
                if system == "decortask" or not row.decortask_only:
                    key = row.key if system == "decortask" else (row.base or row.key)
                    med[system] = median([run.get(key) for run in runs])
            # a measure decortask's runs left out (--measures, --systems) is absent; a failed one is None
            measured = any(row.key in run for run in per_system.get("decortask", []))
            if all(value is None for value in med.values()) or (row.base and not measured):
                continue  # not measured in this run, or only the others' copy of another row
            mine = med.get("decortask")
            cells = [fmt(med[s]) if s in med else "" for s in SYSTEMS]
            ratios = []
            for other in OTHERS:
                base = med.get(other)
                ratios.append(fmt(mine / base, "x") if mine is not None and base else "")
            label = row.label + (f", {LOG_STORE[broker]}" if row.key.startswith(("nolog", "log3")) else "")
            target = TARGETS.get((broker, row.key))
            said = ""
            if target is not None:
                runs = per_system.get("decortask", [])
                base = (
                    median([run.get("nolog_drain") for run in runs])
                    if target.other == "self"
                    else med.get(target.other)
                    if target.other
                    else None
                )
                said = verdict(target, mine, base) or f"n/a ({target.text()})"
                # a comparison left out of this run (--systems) is not a miss; decortask's own failure is
                if said.startswith("MISSED") or (mine is None and measured):
                    missed.append(f"{BROKER_LABELS[broker]} {label}: {said}")
            elif row.key == "batch" and mine:
                single = median([run.get("enqueue") for run in per_system.get("decortask", [])])
                said = f"{mine / single:.1f}x per call" if single else ""
            lines.append(
                f"| {BROKER_LABELS[broker]} | {label} ({row.unit}) | "
                + " | ".join(cells + ratios)
                + f" | {said} |"
            )
    return "\n".join(lines), missed


# -- RESULTS.md ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    info = {"Python": platform.python_version(), "OS": platform.platform(), "cores": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["CPU"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return info


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def versions(packages: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


STORE_NOTE = (
    "decortask's store: its default, SQLite, on every row (RabbitMQ and Redis brokers included) except the "
    "rows that say *Redis store*."
)
SETUP = [
    "- Workers: one process each. decortask `--pool threads -c 8` with its default SQLite state store on "
    "(a file of its own beside the RabbitMQ or Redis broker; the embedded broker's own file on SQLite), "
    "except the rows that say *Redis store* (`store_url=redis://...` on the Redis broker); Celery "
    "`-P threads -c 8`, results off (`task_ignore_result`), `--without-gossip --without-mingle "
    "--without-heartbeat`; Dramatiq `--processes 1 --threads 8`; Huey `SqliteHuey`, `-k thread -w 8`.",
    "- Enqueue, per call: the normal per-call API (`.delay()`, `.send()`, calling a Huey task) from a fresh "
    "process after one untimed call, timed until the last call returns. *Until all published*: also "
    "waiting for decortask's background publisher (the outbox) to have published every message.",
    "- Drain: that pre-filled queue, worker started afterwards; first to last completion, timed inside the "
    "task. `persist=False`: the same no-op declared `@task(persist=False)`. *3 `task_log` lines*: the no-op "
    "after three `task_log()` calls, drained next to the no-log no-op on the same store (order alternated).",
    "- Worker CPU per task: CPU time (user + system) between the first and the last completion, read inside "
    "the process that runs the tasks, divided by the tasks in between. *Task's process*: "
    "`time.process_time()` there (Dramatiq: its worker child); *all worker processes*: utime + stime from "
    "/proc of the worker's whole process tree (Dramatiq's master too).",
    "- Round trip, waiting for the result as users do, sequentially after 10 untimed ones: decortask "
    "`.delay(i).get()`; Celery `.delay(i).get()` with a Redis result backend (on for this measure only); "
    "Dramatiq `.send(i).get_result(block=True)` with its Results middleware on Redis (this measure only); "
    "Huey `result.get(blocking=True)` (its SQLite result store, polled from 50 ms up).",
    "- RSS: VmRSS from /proc of the worker's process tree; idle = after it answered its first probe and "
    "settled for 1 s (Celery and Dramatiq with their result backends on).",
    "- Redis db 14 (broker, results, decortask's Redis store) and the run's own `bench_<token>_*` queues "
    "on RabbitMQ, purged before each phase; SQLite files fresh per phase.",
]


def write_results(
    path: Path,
    text: str,
    missed: list[str],
    header: str,
    loads: tuple[str, str],
    packages: dict[str, str],
    source: str,
    expiry: list[str],
) -> None:
    """RESULTS.md: how the run was made, the table, the setup, and the targets it missed."""
    lines = [
        "# Benchmark results",
        "",
        f"{header} Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        "Ratios are decortask / other: above 1 is better for rates, below 1 is better for latency, CPU and "
        'memory. The target column is issue 12\'s "Done when" list.',
        "",
        STORE_NOTE,
        "",
        (
            "**Taken under load**: the machine was busy with other work during the run (see the load "
            "averages), so the numbers are noisy; rerun on a quiet machine before comparing closely."
            if max(float(v) for v in loads[0].split(", ") + loads[1].split(", ")) > 0.5
            else "The machine was quiet during the run (load averages above)."
        ),
        "",
        text,
        "",
        "## Setup",
        "",
        "- Machine: " + "; ".join(f"{k} {v}" for k, v in machine().items()),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in packages.items()),
        f"- decortask measured: {source}",
        *SETUP,
        "",
    ]
    if expiry:
        lines += [
            "## Expiring 100,000 records while a worker drains (`benchmarks/expiry_lock.py`)",
            "",
            "```",
            *expiry,
            "```",
            "",
        ]
    if missed:
        lines += ["## Targets missed in this run", "", *[f"- {item}" for item in missed], ""]
    path.write_text("\n".join(lines))
