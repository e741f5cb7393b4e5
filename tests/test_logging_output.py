"""Logs and output (issue 15): --logfile, --log-format json, the task named in every line logged inside it,
and a task's print() and logging captured with it.

The subprocess tests run a real `decortask worker --burst` on the embedded SQLite broker (and one on Redis)
and read its log file or stderr; the in-process ones drive the real path with run_pending.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import output_tasks as out
import pytest
from conftest import broker_urls
from workers import REPO, poll_until, run_burst_worker, sqlite_app_for_workers

from decortask import Decortask, TaskContext, capture
from decortask.app import reset_default_app
from decortask.context import MAX_OUTPUT_BYTES
from decortask.dashboard.queries import task_detail
from decortask.testing import run_pending


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Decortask]:
    with sqlite_app_for_workers(tmp_path, "out") as app:
        yield app


def run_worker(app: Decortask, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `decortask worker --burst ARGS` over this file's tasks until the work is done; its stderr."""
    return run_burst_worker(app, tmp_path, "tests.output_tasks", *args, env=env)


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


@pytest.mark.parametrize(
    ("args", "said"), [((), "events off (decortask events shows nothing"), (("--events",), "events on")]
)
def test_the_ready_line_says_whether_the_worker_writes_events(
    sqlite_app: Decortask, tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    out.quiet.delay()
    stderr = run_worker(sqlite_app, tmp_path, *args)
    [ready] = [line for line in stderr.splitlines() if " ready: " in line]
    assert f"tasks registered, {said}" in ready, ready


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


# -- item 3: a task's print() and own logging, captured and stored with it -------------------------------------


def captured(app: Decortask, task_id: str, source: str) -> list[str]:
    record = app.store.get(task_id)
    assert record is not None
    return [line.message for line in record.logs if line.extra.get("source") == source]


def test_eight_threads_printing_at_once_each_store_only_their_own_lines_and_show_prints_them(
    sqlite_app: Decortask, tmp_path: Path
) -> None:
    handles = [out.together.delay(20, f"t{n}") for n in range(8)]
    secretive = out.logs_own.delay(5)
    stderr = run_worker(sqlite_app, tmp_path, "-c", "8")
    for n, handle in enumerate(handles):
        assert captured(sqlite_app, handle.id, "stdout") == [f"t{n} stdout {i}" for i in range(20)]
        assert captured(sqlite_app, handle.id, "logging") == [
            f"WARNING shop.billing: t{n} logging {i}" for i in range(20)
        ]
    assert captured(sqlite_app, secretive.id, "stdout") == ["printed order 5; token=****"]
    assert captured(sqlite_app, secretive.id, "logging") == [
        "INFO shop.billing: charging order 5; password=****"
    ]
    # The task's prints went into its record, not to the worker's stdout; its logging still reaches the log.
    assert (tmp_path / "worker.stdout").read_text() == ""
    assert f"[out.together {handles[0].id}] t0 logging 19" in stderr
    shown = subprocess.run(
        [sys.executable, "-m", "decortask", "show", secretive.id, "--store-url", sqlite_app.settings.store_url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    logs = json.loads(shown.stdout)["logs"]
    assert {"message": "printed order 5; token=****", "source": "stdout"} in [
        {"message": line["message"], "source": line["extra"].get("source")} for line in logs
    ]
    assert out.SECRET not in shown.stdout


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_print_and_logging_of_sync_and_async_tasks_are_stored_under_both_pools(
    sqlite_app: Decortask, tmp_path: Path, pool: str
) -> None:
    sync = out.logs_own.delay(1)
    coroutine = out.async_logs_own.delay(2)
    run_worker(sqlite_app, tmp_path, "--pool", pool, "-c", "2")
    assert captured(sqlite_app, sync.id, "stdout") == ["printed order 1; token=****"]
    assert captured(sqlite_app, coroutine.id, "stdout") == ["async printed order 2"]
    assert captured(sqlite_app, coroutine.id, "logging") == ["INFO shop.billing: async charging order 2"]
    [stored] = [line for line in sqlite_app.store.get(sync.id).logs if line.extra.get("source") is None]
    assert stored.message == "stored line"  # task_log() is stored once, not captured again


def test_capture_on_redis_stores_the_output_with_the_task(tmp_path: Path, unique: str) -> None:
    broker, store = broker_urls("redis", tmp_path, unique)
    app = Decortask(broker, store, default_queue=f"out-{unique}")
    try:
        handle = out.logs_own.delay(9)
        run_worker(app, tmp_path, "-c", "2")
        assert captured(app, handle.id, "stdout") == ["printed order 9; token=****"]
        assert captured(app, handle.id, "logging") == ["INFO shop.billing: charging order 9; password=****"]
    finally:
        app.close()
        reset_default_app()


def test_capture_is_bounded_per_attempt_with_a_marker_and_written_in_batches(
    sqlite_app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    batch = sqlite_app.store.append_logs
    monkeypatch.setattr(
        sqlite_app.store,
        "append_logs",
        lambda task_id, lines: (writes.append(len(lines)), batch(task_id, lines)),
    )
    single = sqlite_app.store.append_log
    monkeypatch.setattr(
        sqlite_app.store, "append_log", lambda task_id, line: (writes.append(1), single(task_id, line))
    )
    quiet = out.quiet.delay()
    run_pending(sqlite_app)
    assert writes == []  # a task that prints nothing writes nothing more
    chatty = out.chatty.delay(capture.MAX_LINES, "c")  # twice the limit: print and logging per line
    run_pending(sqlite_app)
    stdout = captured(sqlite_app, chatty.id, "stdout")
    logged = captured(sqlite_app, chatty.id, "logging")
    assert len(stdout) + len(logged) == capture.MAX_LINES
    assert stdout[:3] == ["c stdout 0", "c stdout 1", "c stdout 2"]
    [marker] = [
        line for line in sqlite_app.store.get(chatty.id).logs if line.extra.get("source") == "capture"
    ]
    assert marker.extra["truncated"] == capture.MAX_LINES
    assert marker.message.startswith(f"output truncated: {capture.MAX_LINES} more lines not stored")
    assert len(writes) <= capture.MAX_LINES // capture.FLUSH_LINES + 1  # batches, not one write per line
    assert sqlite_app.store.get(quiet.id).logs == []


def test_capture_output_off_leaves_prints_on_stdout_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, default_queue=f"out-{uuid.uuid4().hex[:8]}", capture_output=False)
    try:
        handle = out.logs_own.delay(4)
        run_pending(app)
        assert "printed order 4" in capsys.readouterr().out
        assert captured(app, handle.id, "stdout") == [] and captured(app, handle.id, "logging") == []
    finally:
        app.close()
        reset_default_app()


def test_prints_outside_tasks_reach_the_real_stdout_while_a_worker_captures(
    sqlite_app: Decortask, capsys: pytest.CaptureFixture[str]
) -> None:
    capture.enable_for("someone", sqlite_app.store)
    try:
        print("from the worker itself")
    finally:
        capture.disable_for("someone")
    assert capsys.readouterr().out == "from the worker itself\n"


# -- item 4: ctx.set_output, a running task's structured partial output --------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_running_tasks_published_output_is_seen_live_and_kept_apart_from_its_result(
    tmp_path: Path, unique: str, kind: str
) -> None:
    broker, store = broker_urls(kind, tmp_path, unique)
    app = Decortask(broker, store, default_queue=f"out-{unique}")
    flag = tmp_path / "go-on"
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.output_tasks", "-Q", app.settings.default_queue,
        "--burst", "--broker-url", broker, "--store-url", store,
    ]  # fmt: skip
    try:
        handle = out.publishes.delay(str(flag))
        assert handle.output is None
        with open(tmp_path / "worker.log", "wb") as log:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            poll_until(
                lambda: handle.output is not None and handle.output.get("rows") == 10, 60, "the output"
            )
            assert handle.status.value == "RUNNING"  # seen while the task runs
            flag.touch()
            assert handle.get(timeout=60) == "done"
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        assert handle.output == {"rows": 10, "file": "s3://bucket/part-1.csv", "password": out.SECRET}
        detail = task_detail(app.store.get(handle.id))
        assert detail["output"] == {"rows": 10, "file": "s3://bucket/part-1.csv", "password": "****"}
        assert detail["result"] == "done"
    finally:
        app.close()
        reset_default_app()


def test_show_prints_the_output_masked(sqlite_app: Decortask, tmp_path: Path) -> None:
    flag = tmp_path / "go-on"
    flag.touch()
    handle = out.publishes.delay(str(flag))
    run_pending(sqlite_app)
    shown = subprocess.run(
        [sys.executable, "-m", "decortask", "show", handle.id, "--store-url", sqlite_app.settings.store_url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["output"] == {
        "rows": 10,
        "file": "s3://bucket/part-1.csv",
        "password": "****",
    }


def test_set_output_takes_a_bounded_json_object_only() -> None:
    published: list[object] = []
    ctx = TaskContext(task_id="t", name="n", _output_sink=published.append)
    with pytest.raises(TypeError, match="takes a dict"):
        ctx.set_output([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs JSON values"):
        ctx.set_output({"when": object()})
    with pytest.raises(ValueError, match=f"at most {MAX_OUTPUT_BYTES} are kept"):
        ctx.set_output({"blob": "x" * MAX_OUTPUT_BYTES})
    ctx.set_output({"rows": (1, 2)})
    assert published == [{"rows": [1, 2]}]


def test_text_lines_mask_the_message_and_traceback_never_the_loggers_own_name() -> None:
    import logging

    from decortask.logsetup import TEXT_FORMAT, MaskingTextFormatter

    formatter = MaskingTextFormatter(TEXT_FORMAT)

    def line(name: str, message: str, exc: BaseException | None = None) -> str:
        info = (type(exc), exc, None) if exc is not None else None
        record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, info)
        return formatter.format(record)

    # A logger whose name holds a secret-looking word, then ": ", reads like `secret: value` to the sanitizer.
    assert line("app.secret_tasks", "Bob logged in").endswith("INFO app.secret_tasks: Bob logged in")
    assert line("app.auth", "password=hunter2 refused").endswith("app.auth: password=**** refused")
    traceback_line = line("app", "failed", ValueError("token=abc123"))
    assert "token=****" in traceback_line and "abc123" not in traceback_line
