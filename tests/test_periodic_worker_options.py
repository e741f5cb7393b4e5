"""Issue 14: `decortask worker --no-periodic` / `--periodic` override the `periodic` setting for one worker,
and a worker that stops cleanly hands its schedules to another worker at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workers import poll_until

from decortask import Decortask
from decortask.periodic import PeriodicScheduler, lease_name
from decortask.store.periodic_state import periodic_state
from decortask.worker import Worker

REPO = Path(__file__).resolve().parent.parent
HOURLY = {"hourly": {"task": "pt.beat", "every": 3600}}


def _burst_worker(tmp_path: Path, *flags: str, periodic_env: str | None) -> subprocess.CompletedProcess[str]:
    """A real `decortask worker --burst` on a SQLite broker and store, declaring an hourly schedule."""
    store_url = f"sqlite:///{tmp_path}/decortask.db"
    env = {k: v for k, v in os.environ.items() if k != "DECORTASK_PERIODIC"}
    env |= {
        "PYTHONPATH": str(REPO),
        "DECORTASK_SCHEDULES": json.dumps(HOURLY),
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


# -- a clean shutdown hands leadership over at once ----------------------------------------------------


def _lead_then_stop(app: Decortask) -> Worker:
    """Run a real Worker in a thread until it leads `hourly`, then stop it cleanly and wait for it."""
    worker = Worker(app, worker_id="leaving-worker")
    worker.periodic.lease_ttl = 3600.0  # its lease would outlive the test: only a release frees it
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    poll_until(lambda: worker.periodic.leading() == ["hourly"], 30, "the worker to lead the schedule")
    worker.stop()
    runner.join(30)
    assert not runner.is_alive()
    return worker


def test_a_worker_that_stops_cleanly_releases_its_leases_and_another_leads_at_its_next_tick(
    unique: str,
) -> None:
    import tests.periodic_tasks  # noqa: F401 - registers pt.beat

    app = Decortask("memory://", "memory://", default_queue=f"handover-{unique}", schedules=HOURLY)
    try:
        _lead_then_stop(app)
        state = periodic_state(app.store)
        now = time.time()
        assert state.lease_owner(lease_name("hourly"), now) is None
        successor = PeriodicScheduler(app, "staying-worker")
        successor.tick(now)
        assert successor.leading() == ["hourly"]
        assert state.lease_owner(lease_name("hourly"), now) == "staying-worker"
    finally:
        app.close()


def test_a_sigtermed_leader_releases_its_lease_before_it_exits(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/decortask.db"
    env = {k: v for k, v in os.environ.items() if k != "DECORTASK_PERIODIC"}
    env |= {"PYTHONPATH": str(REPO), "DECORTASK_SCHEDULES": json.dumps(HOURLY)}
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.periodic_tasks",
        "--broker-url", store_url, "--store-url", store_url, "-Q", "periodic-handover",
    ]  # fmt: skip
    app = Decortask(store_url, store_url)
    state = periodic_state(app.store)
    worker = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        owner = poll_until(lambda: state.lease_owner(lease_name("hourly"), time.time()), 60, "a leader")
        assert f":{worker.pid}:" in owner
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output
        # Its lease (4 s) would still run had it not been given up: free now, not once it lapses.
        assert state.lease_owner(lease_name("hourly"), time.time()) is None, output
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        app.close()
