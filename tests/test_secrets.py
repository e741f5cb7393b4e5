"""A sentinel password pushed through every path never shows up: logs, banners, errors, records, CLI output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import behaviour_tasks as bt
import pytest
from conftest import require_server
from workers import WorkerProcess, poll_until

from decortask import BrokerUnavailable, Decortask, TaskStatus
from decortask.app import reset_default_app

SENTINEL = "s3ntinel-" + uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parent.parent


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_sentinel_password_never_appears_anywhere(tmp_path: Path) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    # Redis's default user accepts any password in the two-argument AUTH form: a working URL with a secret.
    broker = f"redis://default:{SENTINEL}@127.0.0.1:6379/15"
    masked = "redis://default:****@127.0.0.1:6379/15"
    store = f"sqlite:///{tmp_path}/decortask.db"
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    app = Decortask(broker, store, default_queue=queue)
    try:
        assert SENTINEL not in repr(app) and SENTINEL not in repr(app.settings)
        handle = bt.leaks_a_secret.delay(broker)
        worker = WorkerProcess(broker, store, queue, tmp_path / "worker.log", concurrency=1)
        with worker:
            poll_until(lambda: handle.done(), 30, "the leaking task to fail")
        record = handle.record()
        assert record.status is TaskStatus.FAILED
        stored = json.dumps(record.to_dict(), default=str)
        assert record.args == [broker]  # arguments are the caller's data and are kept as given
        without_args = stored.replace(json.dumps(broker)[1:-1], "")
        assert SENTINEL not in without_args
        assert "hunter2)" not in (record.error_message or "") and "password=****" in (
            record.error_message or ""
        )
        assert SENTINEL not in (record.traceback or "")
        assert [line.extra for line in record.logs][1] == {"password": "****", "note": f"via {masked}"}
        log_text = worker.log_path.read_text()
        assert "worker" in log_text and "ready" in log_text  # the banner was written, with the URL masked
        assert masked in log_text
        assert SENTINEL not in log_text
        env = {"DECORTASK_BROKER_URL": broker, "DECORTASK_STORE_URL": store}
        for args in (("tasks", "--json"), ("tasks",), ("show", handle.id)):
            shown = _cli(env, *args)
            assert shown.returncode == 0, shown.stderr
            visible = shown.stdout.replace(json.dumps(broker)[1:-1], "").replace(broker, "")
            assert SENTINEL not in visible + shown.stderr, args
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()


@pytest.mark.parametrize(
    "url", [f"amqp://guest:{SENTINEL}@127.0.0.1:1//", f"redis://default:{SENTINEL}@127.0.0.1:1/0"]
)
def test_errors_for_an_unreachable_broker_mask_the_password(url: str, tmp_path: Path) -> None:
    app = Decortask(url, f"sqlite:///{tmp_path}/d.db", publish_retries=0, set_default=False)
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            bt.add.apply_async(args=(1, 2), app=app)
        assert SENTINEL not in str(caught.value) and "****" in str(caught.value)
    finally:
        app.close()


def test_a_store_error_masks_the_password(tmp_path: Path) -> None:
    from decortask import StoreError
    from decortask.store import open_store

    store = open_store(f"redis://default:{SENTINEL}@127.0.0.1:1/0")
    with pytest.raises(StoreError) as caught:
        store.get("anything")
    assert SENTINEL not in str(caught.value)
