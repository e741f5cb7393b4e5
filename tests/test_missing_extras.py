"""A URL or option that needs an extra the install lacks says which extra to install, never a traceback.

Each case runs in a fresh interpreter that cannot import what the plain install (`pip install decortask`,
README line 1) does not have: redis-py, `packaging` (kombu's Redis transport imports it), psycopg,
psycopg-pool, prometheus_client, starlette. The dev environment has all of them, so without this the suite
never sees what a first user with a `redis://` URL and no `[redis]` extra sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Top-level packages only the extras bring.
EXTRA_ONLY = ("redis", "packaging", "psycopg", "psycopg_pool", "prometheus_client", "starlette", "uvicorn")

# Runs before decortask is imported: a finder that answers "not installed" for EXTRA_ONLY.
BLOCKER = f"""
import sys
from importlib.abc import MetaPathFinder

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""

CLI = BLOCKER + "from decortask.cli import main\nmain()\n"

ENQUEUE = (
    BLOCKER
    + """
from decortask import ConfigurationError, task

@task
def add(a: int, b: int) -> int:
    return a + b

try:
    add.delay(1, 2)
except ConfigurationError as exc:
    print(exc)
"""
)


def run(code: str, tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECORTASK_")}
    env.update(PYTHONPATH=str(REPO), **settings)
    (tmp_path / "noop_tasks.py").write_text("from decortask import task\n\n@task\ndef noop() -> None: ...\n")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_names_the_extra(result: subprocess.CompletedProcess[str], what: str, extra: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert what in output, output
    assert f"needs the '{extra}' extra, which is not installed" in output, output
    assert f"pip install 'decortask[{extra}]'" in output, output


@pytest.mark.parametrize(
    ("command", "setting", "url", "what", "extra"),
    [
        (
            ("worker", "-A", "noop_tasks"),
            "DECORTASK_BROKER_URL",
            "redis://127.0.0.1:6379/1",
            "Redis broker",
            "redis",
        ),
        (
            ("worker", "-A", "noop_tasks"),
            "DECORTASK_STORE_URL",
            "redis://127.0.0.1:6379/1",
            "Redis store",
            "redis",
        ),
        (("tasks",), "DECORTASK_STORE_URL", "redis://127.0.0.1:6379/1", "Redis store", "redis"),
        (
            ("tasks",),
            "DECORTASK_STORE_URL",
            "postgresql://127.0.0.1:5432/test",
            "PostgreSQL store",
            "postgres",
        ),
        (
            ("show", "x"),
            "DECORTASK_STORE_URL",
            "postgresql://127.0.0.1:5432/test",
            "PostgreSQL store",
            "postgres",
        ),
    ],
)
def test_a_command_given_a_url_whose_extra_is_missing_names_the_extra(
    tmp_path: Path, command: tuple[str, ...], setting: str, url: str, what: str, extra: str
) -> None:
    result = run(CLI, tmp_path, *command, **{setting: url})
    assert result.returncode == 1
    assert_names_the_extra(result, what, extra)


def test_delay_on_a_redis_broker_without_the_extra_raises_a_configuration_error_naming_it(
    tmp_path: Path,
) -> None:
    result = run(ENQUEUE, tmp_path, DECORTASK_BROKER_URL="redis://127.0.0.1:6379/1")
    assert result.returncode == 0, result.stderr
    assert_names_the_extra(result, "Redis broker", "redis")


@pytest.mark.parametrize(
    ("command", "what", "extra"),
    [
        (("worker", "-A", "noop_tasks", "--burst", "--metrics-port", "0"), "--metrics-port", "metrics"),
        (("dashboard",), "the dashboard", "dashboard"),
    ],
)
def test_an_option_whose_extra_is_missing_names_the_extra(
    tmp_path: Path, command: tuple[str, ...], what: str, extra: str
) -> None:
    result = run(CLI, tmp_path, *command)
    assert result.returncode == 1
    assert_names_the_extra(result, what, extra)
