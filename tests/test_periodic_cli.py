"""`decortask schedules` (issue 14): list with next and last runs; pause and resume kept in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from decortask import Decortask
from decortask.periodic import PeriodicScheduler
from decortask.store.periodic_state import periodic_state

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", "schedules", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_schedules_lists_next_and_last_runs_and_pause_and_resume_persist(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/decortask.db"
    schedules = {
        "beat": {"task": "pt.beat", "every": 3600},
        "nightly": {"task": "pt.beat", "cron": "0 3 * * *"},
    }
    env = {
        "DECORTASK_STORE_URL": store_url,
        "DECORTASK_BROKER_URL": store_url,
        "DECORTASK_SCHEDULES": json.dumps(schedules),
    }
    app = Decortask(store_url, store_url, schedules=schedules, default_queue="cli-periodic")
    import tests.periodic_tasks  # noqa: F401 - registers pt.beat

    now = time.time()
    hour = now - now % 3600
    leader = PeriodicScheduler(app, "leader-1")
    leader.tick(hour + 1)  # both schedules start
    leader.tick(hour + 3600 + 1)  # `beat` publishes its slot of the next hour
    listed = _cli("-A", "tests.periodic_tasks", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["beat"]["schedule"] == "every 1h"
    assert rows["beat"]["last_run"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hour + 3600))
    assert rows["beat"]["last_outcome"] == "PENDING"
    assert rows["beat"]["next_run"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hour + 7200))
    # The second tick (the next hour's start) reaches the nightly 03:00 UTC slot when run between 02:00 and
    # 03:00 UTC: then that slot is its last run.
    nightly = hour + 1 - (hour + 1) % 86400 + 3 * 3600
    nightly += 86400 if nightly <= hour + 1 else 0
    reached = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(nightly)) if nightly <= hour + 3601 else None
    assert rows["nightly"]["next_run"].endswith("03:00:00") and rows["nightly"]["last_run"] == reached
    table = _cli("-A", "tests.periodic_tasks", env=env)
    assert (
        table.returncode == 0
        and "NEXT RUN (UTC)" in table.stdout
        and "cron '0 3 * * *' (UTC)" in table.stdout
    )

    paused = _cli("pause", "beat", "-A", "tests.periodic_tasks", env=env)
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    state = periodic_state(app.store)
    assert state.schedule_state("beat").paused  # type: ignore[union-attr]
    again = {r["name"]: r for r in map(json.loads, _cli("--json", env=env).stdout.splitlines())}
    assert again["beat"]["next_run"] == "paused" and again["beat"]["schedule"] == "every 1h"
    assert _cli("resume", "beat", env=env).returncode == 0
    assert not state.schedule_state("beat").paused  # type: ignore[union-attr]

    unknown = _cli("pause", "nope", env=env)
    assert (
        unknown.returncode != 0 and "no schedule named 'nope'" in unknown.stderr and "beat" in unknown.stderr
    )
    app.close()
