"""Issue 14: `decortask worker --no-periodic` / `--periodic` override the `periodic` setting for one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from decortask import Decortask
from decortask.store.periodic_state import periodic_state

REPO = Path(__file__).resolve().parent.parent


def _burst_worker(tmp_path: Path, *flags: str, periodic_env: str | None) -> subprocess.CompletedProcess[str]:
    """A real `decortask worker --burst` on a SQLite broker and store, declaring an hourly schedule."""
    store_url = f"sqlite:///{tmp_path}/decortask.db"
    env = {k: v for k, v in os.environ.items() if k != "DECORTASK_PERIODIC"}
    env |= {
        "PYTHONPATH": str(REPO),
        "DECORTASK_SCHEDULES": json.dumps({"hourly": {"task": "pt.beat", "every": 3600}}),
        "DECORTASK_TEST_EFFECTS": str(tmp_path / "effects.jsonl"),
    }
    if periodic_env is not None:
        env["DECORTASK_PERIODIC"] = periodic_env
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.periodic_tasks", "--burst",
        "--broker-url", store_url, "--store-url", store_url, "-Q", "periodic-options", *flags,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _schedule_seen(tmp_path: Path) -> bool:
    app = Decortask(f"sqlite:///{tmp_path}/decortask.db", f"sqlite:///{tmp_path}/decortask.db")
    try:
        return periodic_state(app.store).schedule_state("hourly") is not None
    finally:
        app.close()


def test_no_periodic_keeps_one_worker_out_of_every_schedule_though_the_setting_is_on(tmp_path: Path) -> None:
    ran = _burst_worker(tmp_path, "--no-periodic", periodic_env=None)
    assert ran.returncode == 0, ran.stderr
    assert "periodic schedules: off for this worker" in ran.stderr
    assert not _schedule_seen(tmp_path)  # it never took the lease nor started the schedule


def test_periodic_flag_takes_part_though_the_setting_is_off(tmp_path: Path) -> None:
    ran = _burst_worker(tmp_path, "--periodic", periodic_env="0")
    assert ran.returncode == 0, ran.stderr
    assert "schedule hourly: this worker" in ran.stderr and "leads it now" in ran.stderr
    assert _schedule_seen(tmp_path)


def test_the_setting_alone_still_decides_without_the_flag(tmp_path: Path) -> None:
    ran = _burst_worker(tmp_path, periodic_env="0")
    assert ran.returncode == 0, ran.stderr
    assert not _schedule_seen(tmp_path)
    assert "periodic schedules: off for this worker" in ran.stderr
