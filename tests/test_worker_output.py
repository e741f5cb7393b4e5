"""What a worker's terminal says (issue 10 item 15), and a retried task's record end to end (item 7).

One line per task outcome, as Celery writes them: name, id, runtime and, on failure, the exception's type
and masked message; never arguments or results. One line per dead letter. A warning for a misspelled
`DECORTASK_*` variable. The in-process tests read the lines through caplog from the real run_pending
path; the subprocess tests read a real `decortask worker`'s stderr.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_log_tasks as wlog
from click.testing import CliRunner
from workers import run_burst_worker, sqlite_app_for_workers

from decortask import Decortask, TaskStatus
from decortask.cli import main
from decortask.config import Settings
from decortask.dashboard.queries import task_detail
from decortask.message import Message
from decortask.recovery import interrupt
from decortask.testing import run_pending

FAR_FUTURE = 4_000_000_000.0


def _lines(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if task_id in record.getMessage()]


def _assert_no_values(text: str) -> None:
    assert wlog.ARGUMENT_SENTINEL not in text
    assert wlog.RESULT_SENTINEL not in text
    assert wlog.SECRET not in text


# -- in process, through run_pending ------------------------------------------------------------------------


def test_worker_logs_one_line_per_success_and_failure_with_name_id_runtime_and_error(
    decortask_app: Decortask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="decortask")
    ok = wlog.echo.delay(wlog.ARGUMENT_SENTINEL)
    bad = wlog.refuses.delay(wlog.ARGUMENT_SENTINEL)
    run_pending(decortask_app)
    [success] = _lines(caplog, ok.id)
    assert success.levelno == logging.INFO
    assert re.fullmatch(rf"task wlog\.echo\[{ok.id}\] succeeded in \d+\.\d{{3}} s", success.getMessage())
    [failure] = _lines(caplog, bad.id)
    assert failure.levelno == logging.WARNING
    assert re.fullmatch(
        rf"task wlog\.refuses\[{bad.id}\] failed in \d+\.\d{{3}} s on attempt 1: "
        r"builtins\.ValueError: the order was refused; password=\*\*\*\*",
        failure.getMessage(),
    )
    _assert_no_values(caplog.text)


def test_worker_logs_a_retry_line_with_the_error_and_when_the_next_attempt_runs(
    decortask_app: Decortask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decortask")
    handle = wlog.fails_once.delay(wlog.ARGUMENT_SENTINEL)
    run_pending(decortask_app)
    run_pending(decortask_app, now=FAR_FUTURE)
    retry, success = (record.getMessage() for record in _lines(caplog, handle.id))
    assert re.fullmatch(
        rf"task wlog\.fails_once\[{handle.id}\] attempt 1 failed in \d+\.\d{{3}} s: "
        r"builtins\.ConnectionError: attempt 1 lost its connection; attempt 2 in 0\.10 s",
        retry,
    )
    assert re.fullmatch(
        rf"task wlog\.fails_once\[{handle.id}\] succeeded in \d+\.\d{{3}} s on attempt 2", success
    )
    _assert_no_values(caplog.text)


def test_worker_logs_an_interrupted_task_with_what_happens_next(
    decortask_app: Decortask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decortask")
    handle = wlog.echo.delay(wlog.ARGUMENT_SENTINEL)
    record = decortask_app.store.transition(
        handle.id, TaskStatus.RUNNING, attempt=1, owner="gone", started_at=1.0
    )
    assert record is not None
    assert interrupt(decortask_app, record, None, "shutdown") is TaskStatus.INTERRUPTED
    [line] = _lines(caplog, handle.id)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(
        f"task wlog.echo[{handle.id}] attempt 1 interrupted (shutdown) after "
    )
    assert line.getMessage().endswith(": INTERRUPTED, not run again (not opted in to requeue_on_interrupt)")


def test_each_dead_letter_is_logged_once_with_its_task_and_reason_never_its_payload(
    decortask_app: Decortask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="decortask")
    queue = decortask_app.settings.default_queue
    unknown = Message(id=uuid.uuid4().hex, task="wlog.ech", args=[wlog.ARGUMENT_SENTINEL])
    decortask_app.transport.publish(json.dumps(unknown.to_dict()).encode(), queue)
    decortask_app.transport.publish(b'{"args": ["' + wlog.ARGUMENT_SENTINEL.encode() + b'"', queue)
    run_pending(decortask_app)
    loud = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(loud) == 2, loud  # one per dead letter, nothing else
    unregistered, malformed = loud
    assert unregistered.startswith(
        f"task wlog.ech[{unknown.id}] dead-lettered to {queue}.dlq (unregistered_task): "
        "no task named 'wlog.ech' is registered; did you mean 'wlog.echo'?"
    )
    assert re.fullmatch(
        rf"message sha256:[0-9a-f]{{16}} dead-lettered to {re.escape(queue)}\.dlq \(decode_error\): "
        r"body is not valid JSON: .*",
        malformed,
    )
    _assert_no_values(caplog.text)


# -- the misspelled-variable warning ----------------------------------------------------------------------


def test_a_misspelled_decortask_variable_is_warned_about_once_naming_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="decortask.config")
    misspelled = f"DECORTASK_BROKR_URL{uuid.uuid4().hex[:4].upper()}"  # new to this process
    env = {
        misspelled: "redis://127.0.0.1:6379/0",
        "DECORTASK_STORE_URL": "memory://",
        "DECORTASK_DASHBOARD_TOKEN": "not a setting, but decortask's",
        "DECORTASK_TEST_REDIS_URL": "a test suite's own",
        "DECORTASK_NOTHING_LIKE_ANY": "someone else's",
    }
    settings = Settings.load(env=env)
    assert settings.broker_url == Settings().broker_url  # ignored: hence the warning
    Settings.load(env=env)  # a second app in the same process: no second warning
    assert [record.getMessage() for record in caplog.records] == [
        f"environment variable {misspelled} is not a decortask setting and is ignored; "
        "did you mean DECORTASK_BROKER_URL?"
    ]


def test_setting_names_for_the_misspelling_warning_come_from_the_settings_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="decortask.config")
    Settings.load(env={"DECORTASK_PREFETCH_MULTIPLER": "2", "DECORTASK_ACCEPT_PLAINTEXT": "yes"})
    assert [record.getMessage() for record in caplog.records] == [
        "environment variable DECORTASK_PREFETCH_MULTIPLER is not a decortask setting and is ignored; "
        "did you mean DECORTASK_PREFETCH_MULTIPLIER?"
    ]


# -- a real `decortask worker` ----------------------------------------------------------------------------


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Decortask]:
    with sqlite_app_for_workers(tmp_path, "wlog") as app:
        yield app


def _run_worker(app: Decortask, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """Run one `decortask worker -c 1 --burst` over this file's tasks until the work is done; its stderr."""
    return run_burst_worker(app, tmp_path, "tests.worker_log_tasks", "-c", "1", env=env)


def test_decortask_worker_stderr_shows_one_success_line_and_one_failure_line(
    sqlite_app: Decortask, tmp_path: Path
) -> None:
    ok = wlog.echo.delay(wlog.ARGUMENT_SENTINEL)
    bad = wlog.refuses.delay(wlog.ARGUMENT_SENTINEL)
    stderr = _run_worker(sqlite_app, tmp_path, env={"DECORTASK_STOER_URL": "memory://"})
    outcomes = [line for line in stderr.splitlines() if re.search(r"(succeeded|failed) in ", line)]
    assert len(outcomes) == 2, stderr
    assert re.search(
        rf" INFO decortask\.worker: task wlog\.echo\[{ok.id}\] succeeded in \d+\.\d+ s$", stderr, re.M
    )
    assert re.search(
        rf" WARNING decortask\.worker: task wlog\.refuses\[{bad.id}\] failed in \d+\.\d+ s on attempt 1: "
        r"builtins\.ValueError: the order was refused; password=\*\*\*\*$",
        stderr,
        re.M,
    )
    assert stderr.count("did you mean DECORTASK_STORE_URL?") == 1  # the misspelled variable, once
    # The last line sums up the run, as an operator reads it after a stop.
    assert re.search(
        r" INFO decortask\.worker: worker \S+ stopped: 2 received, 1 FAILED, 1 SUCCESS$", stderr, re.M
    )
    _assert_no_values(stderr)


def test_success_after_a_retry_leaves_no_error_in_record_show_and_dashboard_with_a_real_worker(
    sqlite_app: Decortask, tmp_path: Path
) -> None:
    handle = wlog.fails_once.delay(wlog.ARGUMENT_SENTINEL)
    _run_worker(sqlite_app, tmp_path)
    record = handle.record()
    assert (record.status, record.attempt) == (TaskStatus.SUCCESS, 2)
    assert (record.error_type, record.error_message, record.traceback, record.reason) == (None,) * 4
    detail = task_detail(record)
    assert (detail["error_type"], detail["error_message"], detail["traceback"]) == (None, None, None)
    env = {
        "DECORTASK_BROKER_URL": sqlite_app.settings.broker_url,
        "DECORTASK_STORE_URL": sqlite_app.settings.store_url,
    }
    shown = CliRunner().invoke(main, ["show", handle.id], env=env)
    assert shown.exit_code == 0, shown.output
    data, _ = json.JSONDecoder().raw_decode(shown.output[shown.output.index("{") :])
    assert (data["status"], data["error_type"], data["error_message"], data["traceback"]) == (
        "SUCCESS",
        None,
        None,
        None,
    )
    # The first attempt's error is history: a line in the task's log.
    assert [line["message"] for line in data["logs"]] == [
        "attempt 1 failed: builtins.ConnectionError: attempt 1 lost its connection; attempt 2 in 0.10 s"
    ]
