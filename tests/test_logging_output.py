"""Logs and output (issue 15): --logfile, --log-format json, the task named in every line logged inside it,
and a task's print() and logging captured with it.

The subprocess tests run a real `decortask worker --burst` on the embedded SQLite broker (and one on Redis)
and read its log file or stderr; the in-process ones drive the real path with run_pending.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import output_tasks as out
import pytest
from workers import REPO

from decortask import Decortask
from decortask.app import reset_default_app


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Decortask]:
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, default_queue=f"out-{uuid.uuid4().hex[:8]}")
    try:
        yield app
    finally:
        app.close()
        reset_default_app()


def run_worker(app: Decortask, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `decortask worker --burst ARGS` on the app's broker and store until the work is done; its stderr."""
    stderr_path = tmp_path / "worker.stderr"
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.output_tasks",
        "-Q", app.settings.default_queue, "--burst",
        "--broker-url", app.settings.broker_url, "--store-url", app.settings.store_url, *args,
    ]  # fmt: skip
    with open(stderr_path, "wb") as stderr, open(tmp_path / "worker.stdout", "wb") as stdout:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr
        )
        try:
            assert process.wait(timeout=120) == 0, stderr_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return stderr_path.read_text()


# -- item 1: --logfile and --log-format json -----------------------------------------------------------------


def test_logfile_receives_the_worker_log_and_stderr_stays_empty(
    sqlite_app: Decortask, tmp_path: Path
) -> None:
    handle = out.quiet.delay()
    logfile = tmp_path / "logs" / "worker.log"
    logfile.parent.mkdir()
    stderr = run_worker(sqlite_app, tmp_path, "--logfile", str(logfile))
    assert stderr == ""
    text = logfile.read_text()
    assert re.search(r" INFO decortask\.worker: worker \S+ ready: ", text), text
    assert f"task out.quiet[{handle.id}] succeeded in " in text


def test_json_log_format_writes_one_masked_object_per_line_with_worker_and_task_fields(
    sqlite_app: Decortask, tmp_path: Path
) -> None:
    handle = out.logs_own.delay(7)
    logfile = tmp_path / "worker.jsonl"
    run_worker(sqlite_app, tmp_path, "--logfile", str(logfile), "--log-format", "json")
    entries = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert entries and all(
        {"ts", "level", "logger", "message", "worker_id"} <= entry.keys() for entry in entries
    )
    [ready] = [e for e in entries if " ready: " in e["message"]]
    assert ready["logger"] == "decortask.worker" and ready["level"] == "INFO" and "task_id" not in ready
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ready["ts"])
    [own] = [e for e in entries if e["logger"] == "shop.billing"]
    assert own["task_name"] == "out.logs_own" and own["task_id"] == handle.id
    assert own["worker_id"] == ready["worker_id"]
    assert own["message"] == "charging order 7; password=****"
    assert out.SECRET not in logfile.read_text()


def test_an_unknown_log_format_is_refused_with_the_choices() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "decortask", "worker", "--log-format", "xml"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert process.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in process.stderr


# -- item 2: the task's name and id in every line logged inside it ---------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_lines_a_task_logs_with_its_own_logger_name_the_task(
    sqlite_app: Decortask, tmp_path: Path, pool: str
) -> None:
    sync = out.logs_own.delay(3)
    coroutine = out.async_logs_own.delay(4)
    stderr = run_worker(sqlite_app, tmp_path, "--pool", pool, "-c", "2")
    assert re.search(
        rf" INFO shop\.billing(\[\d+\])?: \[out\.logs_own {sync.id}\] charging order 3; password=\*\*\*\*$",
        stderr,
        re.M,
    ), stderr
    assert re.search(
        rf" INFO shop\.billing(\[\d+\])?: \[out\.async_logs_own {coroutine.id}\] async charging order 4$",
        stderr,
        re.M,
    ), stderr
    # task_log() lines named the task already: not twice.
    assert re.search(rf"decortask\.task(\[\d+\])?: \[out\.logs_own {sync.id}\] stored line$", stderr, re.M)
    # Lines outside tasks are unchanged.
    assert re.search(r" INFO decortask\.worker(\[\d+\])?: worker \S+ ready: ", stderr)
    assert out.SECRET not in stderr
