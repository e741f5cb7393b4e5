"""The `decortask` command: clear one-line errors with masked secrets, and record inspection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decortask import Decortask, task
from decortask.app import reset_default_app
from decortask.testing import run_pending

REPO = Path(__file__).resolve().parent.parent
TASKS = ("-A", "tests.behaviour_tasks")


def _cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:sentinel-pw@127.0.0.1:1//",
        "redis://:sentinel-pw@127.0.0.1:1/0",
        "kafka://user:sentinel-pw@127.0.0.1:9092",
        "sqlite://",
    ],
)
def test_b11_worker_with_a_bad_broker_url_exits_non_zero_with_one_clear_line(
    url: str, tmp_path: Path
) -> None:
    result = _cli(
        "worker", *TASKS, "--broker-url", url, "--store-url", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "sentinel-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_f24_worker_with_a_corrupt_store_file_exits_non_zero_and_leaves_it(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    store.write_bytes(b"this is not a database" * 100)
    before = store.read_bytes()
    result = _cli(
        "worker", *TASKS, "--broker-url", "memory://", "--store-url", f"sqlite:///{store}", cwd=tmp_path
    )
    assert result.returncode != 0
    assert str(store) in result.stderr
    assert store.read_bytes() == before


def test_worker_without_tasks_refuses_to_start(tmp_path: Path) -> None:
    result = _cli("worker", "--broker-url", "memory://", "--store-url", "memory://", cwd=tmp_path)
    assert result.returncode != 0
    assert "no tasks are registered" in result.stderr and "-A" in result.stderr


@task(name="cli.echo")
def echo(text: str) -> str:
    return text


def test_tasks_and_show_read_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    app = Decortask(url, url)
    try:
        handle = echo.delay("hi")
        run_pending(app)
    finally:
        app.close()
        reset_default_app()
    env = {"DECORTASK_BROKER_URL": url, "DECORTASK_STORE_URL": url}
    listing = _cli("tasks", "--status", "success", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["id"], r["name"], r["status"]) for r in rows] == [(handle.id, "cli.echo", "SUCCESS")]
    shown = _cli("show", handle.id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == "hi"
    missing = _cli("show", "nope", env=env)
    assert missing.returncode != 0 and "no task nope" in missing.stderr
