"""Expiring records on a SQLite store (issue 12): short write transactions, and the freed space given back.

`SQLiteStore.purge_expired` deletes in batches, each its own write transaction bounded by rows and time,
so a worker's claims and outcomes get the write lock between them; a new file is created with incremental
auto-vacuum and a purge returns its free pages in bounded steps; an older file reuses them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from workers import poll_until

from decortask import Decortask
from decortask import worker as worker_module
from decortask.app import reset_default_app
from decortask.cli import main as cli_main
from decortask.states import TaskStatus
from decortask.store import LogLine, TaskRecord
from decortask.store.sqlite import SQLiteStore
from decortask.store.sqlite_expiry import ExpiryLimits, PurgeBatch
from decortask.transports import sqlite as sqlite_transport
from decortask.worker import Worker

S = TaskStatus
T0 = 1_700_000_000.0
NOW = T0 + 1000


def record(
    task_id: str, status: TaskStatus = S.SUCCESS, expires_at: float | None = T0, **fields: object
) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        name="tests.expiring",
        queue="default",
        status=status,
        created_at=T0,
        updated_at=T0,
        expires_at=expires_at,
        **fields,  # type: ignore[arg-type]
    )


def expired(store: SQLiteStore, count: int, prefix: str = "old", *, log_bytes: int = 0) -> list[str]:
    """Create `count` SUCCESS records that expired at T0, each with one log line of `log_bytes` characters."""
    ids = [f"{prefix}-{n}" for n in range(count)]
    logs = [LogLine(ts=T0, message="x" * log_bytes)] if log_bytes else []
    store.create_many([record(task_id, logs=list(logs)) for task_id in ids])
    return ids


def pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def rows(path: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql, params).fetchone()[0])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(f"sqlite:///{path}")
    yield opened
    opened.close()


def test_a_purge_commits_batches_of_at_most_batch_rows_records(store: SQLiteStore) -> None:
    expired(store, 35)
    store.expiry_limits = ExpiryLimits(batch_rows=10, chunk_rows=4)
    statements: list[str] = []
    conn = store._conn()  # the purge runs on this thread's connection: watch what it sends
    conn.set_trace_callback(statements.append)
    try:
        assert store.purge_expired(NOW) == 35
    finally:
        conn.set_trace_callback(None)
    transactions: list[int] = []  # records deleted by each write transaction, in order
    for sql in statements:
        if sql.startswith("BEGIN IMMEDIATE"):
            transactions.append(0)
        elif sql.startswith("DELETE FROM decortask_tasks"):
            transactions[-1] += sql.count("'old-")
    deleting = [n for n in transactions if n]
    assert sum(deleting) == 35
    assert len(deleting) >= 4
    assert max(deleting) <= 10


def test_a_batch_stops_once_its_time_budget_is_spent(store: SQLiteStore) -> None:
    expired(store, 10)
    batches: list[PurgeBatch] = []
    store.on_purge_batch = batches.append
    # No time at all: every batch stops after its first chunk, however many rows it may take.
    store.expiry_limits = ExpiryLimits(batch_rows=100, chunk_rows=4, batch_seconds=0.0)

    assert store.purge_expired(NOW) == 10
    assert [b.rows for b in batches if b.kind == "delete"] == [4, 4, 2]


def test_another_writer_gets_the_lock_between_two_batches(path: Path, store: SQLiteStore) -> None:
    expired(store, 30)
    store.expiry_limits = ExpiryLimits(batch_rows=10)
    # A writer that would give up at once if the purge still held the write lock.
    other = SQLiteStore(f"sqlite:///{path}?busy_timeout=0")
    written: list[str] = []

    def write_from_another_thread(batch: PurgeBatch) -> None:
        task_id = f"written-between-{len(written)}"
        failed: list[BaseException] = []

        def write() -> None:
            try:
                other.create(record(task_id, status=S.PENDING, expires_at=None))
            except BaseException as exc:
                failed.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive() and not failed, f"the writer could not write between batches: {failed}"
        written.append(task_id)

    store.on_purge_batch = write_from_another_thread
    try:
        assert store.purge_expired(NOW) == 30
    finally:
        other.close()
    assert len(written) >= 3
    assert all(store.get(task_id) is not None for task_id in written)


def test_a_purge_deletes_only_terminal_records_past_their_expiry(store: SQLiteStore) -> None:
    gone = expired(store, 25)
    store.create(record("not-yet", expires_at=NOW + 1))
    store.create(record("never", expires_at=None))
    store.create(record("still-running", status=S.RUNNING))  # a stale expires_at on a live record
    store.create(record("waiting", status=S.PENDING))
    store.create(record("failed-long-ago", status=S.FAILED))
    store.expiry_limits = ExpiryLimits(batch_rows=7, chunk_rows=3)

    assert store.purge_expired(NOW) == 26
    assert all(store.get(task_id) is None for task_id in [*gone, "failed-long-ago"])
    for kept in ("not-yet", "never", "still-running", "waiting"):
        assert store.get(kept) is not None, kept
    assert store.purge_expired(NOW) == 0


def test_log_lines_and_idempotency_keys_of_purged_records_go_with_them(
    path: Path, store: SQLiteStore
) -> None:
    for n in range(12):
        store.create(record(f"old-{n}", idempotency_key=f"key-{n}"))
        store.append_logs(f"old-{n}", [LogLine(ts=T0, message=f"line {i}") for i in range(3)])
    store.create(record("kept", expires_at=NOW + 1, idempotency_key="kept-key"))
    store.append_log("kept", LogLine(ts=T0, message="still here"))
    store.expiry_limits = ExpiryLimits(batch_rows=5, chunk_rows=2)

    assert store.purge_expired(NOW) == 12
    assert rows(path, "SELECT COUNT(*) FROM decortask_logs WHERE task_id LIKE 'old-%'") == 0
    assert rows(path, "SELECT COUNT(*) FROM decortask_idempotency WHERE task_id LIKE 'old-%'") == 0
    kept = store.get("kept")
    assert kept is not None and [line.message for line in kept.logs] == ["still here"]
    assert rows(path, "SELECT COUNT(*) FROM decortask_idempotency WHERE key = 'kept-key'") == 1
    # A purged record's key is free: a new call with it makes a new task.
    assert store.create(record("new", status=S.PENDING, idempotency_key="key-3")).id == "new"


def test_a_new_store_file_is_created_with_incremental_auto_vacuum(path: Path, store: SQLiteStore) -> None:
    assert pragma(path, "auto_vacuum") == 2  # INCREMENTAL


def test_a_file_the_embedded_broker_creates_first_also_has_incremental_auto_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    sqlite_transport.connect(str(path)).close()
    SQLiteStore(f"sqlite:///{path}").close()
    assert pragma(path, "auto_vacuum") == 2


def test_a_purge_returns_the_freed_pages_to_the_file_system_in_bounded_steps(
    path: Path, store: SQLiteStore
) -> None:
    expired(store, 600, log_bytes=4000)
    store.create(record("kept", expires_at=None))
    full = pragma(path, "page_count")
    batches: list[PurgeBatch] = []
    store.on_purge_batch = batches.append
    store.expiry_limits = ExpiryLimits(batch_rows=100, vacuum_pages=64)

    assert store.purge_expired(NOW) == 600
    assert pragma(path, "freelist_count") == 0
    assert pragma(path, "page_count") < full / 4
    vacuum_steps = [b.rows for b in batches if b.kind == "vacuum"]
    assert len(vacuum_steps) > 1 and max(vacuum_steps) <= 64
    assert sum(vacuum_steps) > full / 2
    with sqlite3.connect(path) as conn:  # the WAL holds the shorter file until a checkpoint copies it back
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size == pragma(path, "page_count") * pragma(path, "page_size")
    assert store.get("kept") is not None


def test_a_file_made_without_auto_vacuum_reuses_its_freed_pages(path: Path) -> None:
    with sqlite3.connect(path) as conn:  # a store file made before stores set auto_vacuum
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE made_before (x)")
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        assert pragma(path, "auto_vacuum") == 0
        expired(store, 400, "first", log_bytes=4000)
        full = pragma(path, "page_count")
        assert store.purge_expired(NOW) == 400
        assert pragma(path, "page_count") == full  # nothing returned...
        freed = pragma(path, "freelist_count")
        assert freed > full / 2
        expired(store, 400, "second", log_bytes=4000)
        # ...but the same records again fit in the freed pages: the file grows by a fraction of them at most.
        assert pragma(path, "page_count") - full < freed / 10
        assert pragma(path, "freelist_count") < freed / 10
    finally:
        store.close()


def test_a_worker_keeps_draining_while_its_own_purge_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    import behaviour_tasks

    monkeypatch.setattr(worker_module, "PURGE_INTERVAL", 0.05)
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, default_queue=f"purging-{unique}")
    purging, release = threading.Event(), threading.Event()
    real_purge = app.store.purge_expired

    def long_purge(now: float) -> int:  # lasts until the tasks below are done (or the test gives up)
        purging.set()
        release.wait(60)
        return real_purge(now)

    monkeypatch.setattr(app.store, "purge_expired", long_purge)
    worker = Worker(app, concurrency=2)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        poll_until(purging.is_set, 30, "the worker's first purge")
        handles = [behaviour_tasks.add.delay(n, 1) for n in range(5)]
        assert [handle.wait(timeout=20).value for handle in handles] == [1, 2, 3, 4, 5]
        assert not release.is_set()  # all of it while the purge was still running
    finally:
        release.set()
        worker.stop()
        runner.join(60)
        app.close()
        reset_default_app()


def decortask_cli(*args: str) -> Result:
    """Run `decortask ARGS` in this process, with an app on memory:// unless the arguments say otherwise."""
    env = {"DECORTASK_BROKER_URL": "memory://", "DECORTASK_STORE_URL": "memory://"}
    try:
        return CliRunner().invoke(cli_main, list(args), env=env)
    finally:
        reset_default_app()  # --store-url makes a default app: the next test must not find it


def test_decortask_store_vacuum_switches_an_old_file_to_incremental_and_drops_its_free_pages(
    path: Path,
) -> None:
    with sqlite3.connect(path) as conn:  # a store file made before stores set auto_vacuum
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE made_before (x)")
    url = f"sqlite:///{path}"
    store = SQLiteStore(url)
    try:
        expired(store, 300, log_bytes=4000)
        store.create(record("kept", expires_at=None))
        assert store.purge_expired(NOW) == 300
    finally:
        store.close()
    freed = pragma(path, "freelist_count")
    assert freed > 0 and pragma(path, "auto_vacuum") == 0

    result = decortask_cli("store", "vacuum", "--store-url", url, "--yes")

    assert result.exit_code == 0, result.output
    assert "auto_vacuum none -> incremental" in result.output
    assert (pragma(path, "auto_vacuum"), pragma(path, "freelist_count")) == (2, 0)
    reopened = SQLiteStore(url)
    try:
        assert reopened.get("kept") is not None
    finally:
        reopened.close()


def test_decortask_store_vacuum_refuses_a_store_without_a_file() -> None:
    result = decortask_cli("store", "vacuum", "--yes")
    assert result.exit_code != 0
    assert "only a SQLite store has a file to vacuum" in result.output
