"""Installs as users make them, each in a fresh virtualenv that sees nothing of the test environment.

The dev environment (`.[dev]`) pulls in every optional dependency and many transitive ones, so it hides an
extra that forgets one. Here each venv holds only what one install line gives: `pip install '<repo>[redis]'`,
`pip install '<repo>[fastapi]'`, or the README's `pip install -e <repo>`. Each is made once per session
(pip may use its cache; PyPI must be reachable) and its programs run from a directory outside the repository,
with no PYTHONPATH or MYPYPATH, so they can only find decortask where the install put it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_apps import BrokerApp, close_app, open_app

REPO = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "typing_cases"

pytestmark = pytest.mark.install

# Variables that would let a program find the repository's sources or the dev venv instead of the install.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "MYPYPATH", "VIRTUAL_ENV", "PYTHONSAFEPATH")


def isolated_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the repository, the dev venv or decortask settings."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY and not k.startswith("DECORTASK_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return {**env, **extra}


def make_venv(root: Path, *pip_args: str) -> Path:
    """A fresh venv in `root` with `pip install <pip_args>`; its `bin` directory."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=120)
    bin_dir = root / "bin"
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", *pip_args],
        cwd=root,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"pip install {' '.join(pip_args)} failed:\n{result.stdout}{result.stderr}"
    return bin_dir


def installed_names(bin_dir: Path) -> set[str]:
    """Normalised names of the distributions installed in a venv."""
    listed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format", "json"],
        env=isolated_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {re.sub(r"[-_.]+", "-", d["name"]).lower() for d in json.loads(listed.stdout)}


@pytest.fixture(scope="session")
def redis_extra_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install '<repo>[redis]'`, a regular (not editable) install, so the wheel's contents are used."""
    return make_venv(tmp_path_factory.mktemp("venv-redis"), f"{REPO}[redis]")


@pytest.fixture(scope="session")
def fastapi_extra_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("venv-fastapi"), f"{REPO}[fastapi]")


@pytest.fixture(scope="session")
def readme_editable_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first line: `pip install -e .`, no extras."""
    return make_venv(tmp_path_factory.mktemp("venv-editable"), "-e", str(REPO))


@pytest.fixture
def redis_setup(tmp_path: Path, unique: str) -> Iterator[BrokerApp]:
    """A queue and a store namespace of its own on the suite's Redis, removed afterwards."""
    setup = open_app("redis", tmp_path, unique)
    try:
        yield setup
    finally:
        close_app(setup)


TASKS_MODULE = """
from decortask import task


@task
def add(a: int, b: int) -> int:
    return a + b
"""

PRODUCER = """
import json

import decortask
from install_tasks import add

handles = [add.delay(n, 10) for n in range(3)]
results = [handle.get(timeout=60) for handle in handles]
print(json.dumps({
    "decortask": decortask.__file__,
    "results": results,
    "statuses": [handle.status.value for handle in handles],
}))
"""


def test_the_redis_extra_alone_runs_a_producer_and_a_worker_on_redis_to_success(
    redis_extra_venv: Path, redis_setup: BrokerApp, tmp_path: Path
) -> None:
    """Issue 10 item 4: with only `decortask[redis]` installed, kombu's Redis transport finds everything it
    imports (it needs `packaging`, which only kombu's own `redis` extra declares)."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "install_tasks.py").write_text(TASKS_MODULE)
    (work / "producer.py").write_text(PRODUCER)
    store_url = redis_setup.app.settings.store_url
    env = isolated_env(
        DECORTASK_BROKER_URL=redis_setup.app.settings.broker_url,
        DECORTASK_STORE_URL=store_url,
        DECORTASK_DEFAULT_QUEUE=redis_setup.queue,
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [str(redis_extra_venv / "decortask"), "worker", "-A", "install_tasks", "-c", "2", "-l", "INFO"],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        produced = subprocess.run(
            [str(redis_extra_venv / "python"), "producer.py"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert produced.returncode == 0, (
            f"producer failed:\n{produced.stdout}{produced.stderr}\nworker log:\n{log_path.read_text()}"
        )
        outcome = json.loads(produced.stdout.strip().splitlines()[-1])
        assert Path(outcome["decortask"]).is_relative_to(redis_extra_venv.parent)  # the installed copy
        assert outcome["results"] == [10, 11, 12]
        assert outcome["statuses"] == ["SUCCESS"] * 3
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(timeout=60)
    log_text = log_path.read_text()
    assert code == 0, log_text
    assert "Traceback" not in log_text, log_text
    # the venv holds the redis extra and nothing of the dev tools that used to hide a missing dependency
    assert "redis" in installed_names(redis_extra_venv)
    assert not {"pytest", "mypy", "django", "flask", "fastapi"} & installed_names(redis_extra_venv)


def _python_blocks(markdown: str, heading: str) -> list[str]:
    """The ```python blocks of one `## heading` section of a docs page."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def _imported_top_level_modules(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names


def test_the_fastapi_extra_alone_has_what_the_fastapi_pages_testing_section_imports(
    fastapi_extra_venv: Path, tmp_path: Path
) -> None:
    """Issue 10 item 5: docs/integrations/fastapi.md tests endpoints with httpx (and fastapi's TestClient
    needs it too), so `decortask[fastapi]` must bring it."""
    page = (REPO / "docs" / "integrations" / "fastapi.md").read_text()
    modules = set().union(*map(_imported_top_level_modules, _python_blocks(page, "Testing")))
    modules -= {"reports"} | set(sys.stdlib_module_names)  # the page's own example project; the stdlib
    assert "httpx" in modules  # the section still reads as this test assumes
    check = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    check += "from fastapi.testclient import TestClient\n"
    result = subprocess.run(
        [str(fastapi_extra_venv / "python"), "-c", check, *sorted(modules)],
        cwd=tmp_path,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_readmes_editable_install_is_typed_for_mypy(readme_editable_venv: Path, tmp_path: Path) -> None:
    """Issue 10 item 6: after the README's `pip install -e .`, mypy run on a user's file outside the repository
    finds decortask through the install and rejects `add.delay("1", 2)`; correct calls pass."""
    case = tmp_path / "delay_arguments.py"
    shutil.copy(CASES / "delay_arguments.py", case)
    expected = {
        n for n, line in enumerate(case.read_text().splitlines(), 1) if line.rstrip().endswith("# error")
    }
    # mypy from the dev venv, told to find packages where the fresh venv's interpreter finds them
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", str(readme_editable_venv / "python"), case.name,
        ],
        cwd=tmp_path,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    reported = {int(m.group(1)) for m in re.finditer(r"delay_arguments\.py:(\d+): error", result.stdout)}
    assert "import-not-found" not in result.stdout and "import-untyped" not in result.stdout, result.stdout
    assert reported == expected, result.stdout


#: Where a module of decortask needs an extra: (module prefix, extra, a distribution of that extra). Any
#: other module must import with the plain install; pytest_plugin is loaded by pytest, which has pytest.
EXTRA_MODULES = (
    ("decortask.contrib.django", "django", "django"),
    ("decortask.contrib.flask", "flask", "flask"),
    ("decortask.contrib.prometheus", "metrics", "prometheus-client"),
    ("decortask.contrib.sentry", "sentry", "sentry-sdk"),
    ("decortask.contrib.pytest_plugin", "(pytest)", "pytest"),
    ("decortask.dashboard", "dashboard", "starlette"),
    ("decortask.store.postgres", "postgres", "psycopg"),
    ("decortask.store.redis", "redis", "redis"),
    ("decortask.transports.redis", "redis", "redis"),
)

IMPORT_ALL = """
import importlib, json, pkgutil, decortask
failed = {}
for found in pkgutil.walk_packages(decortask.__path__, "decortask.", onerror=lambda name: None):
    if found.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(found.name)
    except Exception as exc:
        failed[found.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


@pytest.mark.parametrize("venv", ["readme_editable_venv", "redis_extra_venv"])
def test_every_module_imports_unless_it_belongs_to_an_extra_the_install_lacks(
    venv: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A module that imports something no extra of its own brings fails here, in an install that has only
    what its install line gives (the dev environment has every extra and cannot see it)."""
    bin_dir: Path = request.getfixturevalue(venv)
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", IMPORT_ALL],
        cwd=tmp_path,
        env=isolated_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    failed: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    installed = installed_names(bin_dir)
    allowed = {
        prefix
        for prefix, _extra, distribution in EXTRA_MODULES
        if distribution not in installed  # an extra this venv has must import
    }
    unexpected = {
        name: why
        for name, why in failed.items()
        if not any(name == prefix or name.startswith(prefix) for prefix in allowed)
    }
    assert not unexpected, f"modules that fail to import with {venv}'s install alone: {unexpected}"
