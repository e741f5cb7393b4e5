"""Static guarantees: mypy strict and ruff are clean, and `.delay()` with wrong arguments is a type error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "typing_cases"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_mypy_strict_is_clean_on_the_package() -> None:
    result = _run("mypy", "decortask")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("check", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_is_clean(check: tuple[str, ...]) -> None:
    result = _run(*check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_delay_with_wrong_arguments_is_a_type_error() -> None:
    case = CASES / "delay_arguments.py"
    expected = {
        n for n, line in enumerate(case.read_text().splitlines(), 1) if line.rstrip().endswith("# error")
    }
    result = _run("mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(case))
    reported = {int(m.group(1)) for m in re.finditer(r"delay_arguments\.py:(\d+): error", result.stdout)}
    assert reported == expected, result.stdout


def test_docs_build_strictly(tmp_path: Path) -> None:
    result = _run("mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr
