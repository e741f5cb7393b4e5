"""Every example runs: the quickstart on the embedded default, with no server and no configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quickstart_runs_on_the_embedded_default(tmp_path: Path) -> None:
    out = run_example("examples.quickstart", tmp_path)
    assert "examples.quickstart.add: SUCCESS -> 11" in out
    assert "examples.quickstart.add: SUCCESS -> 33" in out
    assert "examples.quickstart.count_words: SUCCESS after 2 attempts -> 11" in out
    assert (tmp_path / "decortask.db").exists()  # the default: one SQLite file in the working directory


def test_the_workflows_example_runs_a_chain_a_group_a_chord_and_nested_ones(tmp_path: Path) -> None:
    out = run_example("examples.workflows", tmp_path)
    assert "chain: 51" in out
    assert "failing chain: chain " in out and "step 2 of 3, examples.workflows.check_positive" in out
    assert "group: [1, 4, 9, 16, 25]" in out
    assert "chord: 55" in out
    assert "group in a chain: 220" in out
    assert "chains in a chord: 121" in out


def test_the_graphs_example_runs_a_finally_node_after_a_failure(tmp_path: Path) -> None:
    out = run_example("examples.graphs", tmp_path)
    assert "tolerant graph: FAILED, summary: 4 words, title: none" in out
    assert (
        "strict graph: FAILED: download SUCCESS, count_words SUCCESS, find_title FAILED, summary CANCELLED"
        in out
    )
    assert (
        "strict graph's finally node: download=ok, count_words=ok, find_title=no result, summary=no result"
        in out
    )


def test_the_late_results_example_merges_hot_and_wakes_the_follow_up(tmp_path: Path) -> None:
    out = run_example("examples.late_results", tmp_path)
    assert "cheapest: south at 9" in out
    assert "late result: restock: SUCCESS -> south restocked" in out


def test_the_celery_canvas_example_runs_the_celery_guides_workflows_with_one_changed_import(
    tmp_path: Path,
) -> None:
    out = run_example("examples.celery_canvas", tmp_path)
    assert "chain: 16, 640" in out
    assert "group: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in out
    assert "chord: 90, 90" in out
    assert "bound step: 3 (by examples.celery_canvas.stamp)" in out
    assert "link: 20" in out
    assert "link_error: builtins.ValueError: 7 is not welcome" in out


def run_example(module: str, cwd: Path) -> str:
    """Run `python -m module` in `cwd` with no DECORTASK_ settings; its output, once it exited with 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECORTASK_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
