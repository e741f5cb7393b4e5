"""What is PostgreSQL's own in the PostgreSQL store: its versioned schema, NOTIFY wake-ups, the schedule
claimed with SKIP LOCKED, schemas kept apart, and errors that never show a password.

The shared behaviour of every store is in tests/test_store_contract.py (which runs on PostgreSQL too).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, drop_postgres_schema, postgres_store_url, postgres_test_store
from store_helpers import first_read_done
from workers import REPO

from decortask.errors import ConfigurationError, StoreError
from decortask.states import TaskStatus
from decortask.store import LogLine, ScheduleEntry, TaskQuery, TaskRecord, open_store
from decortask.store.postgres import PostgresStore
from decortask.store.postgres_events import PostgresEventFeed
from decortask.store.postgres_schema import SCHEMA_VERSION

S = TaskStatus


@pytest.fixture
def token() -> Iterator[str]:
    value = uuid.uuid4().hex[:10]
    yield value
    drop_postgres_schema(value)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Iterator[PostgresStore]:
    opened = open_store(postgres_test_store(request))
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def _record(task_id: str | None = None, **fields: Any) -> TaskRecord:
    now = time.time()
    values: dict[str, Any] = {
        "name": "t",
        "queue": "q",
        "status": S.PENDING,
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return TaskRecord(id=task_id or uuid.uuid4().hex, **values)


def _sql(schema_token: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cursor = conn.execute(statement.replace("{s}", f'"dt_test_{schema_token}"'))
        return cursor.fetchall() if cursor.description else []


# -- the schema ---------------------------------------------------------------------------------------------


def test_a_new_store_creates_its_tables_at_the_current_schema_version(token: str) -> None:
    open_store(postgres_store_url(token)).close()
    assert _sql(token, "SELECT version FROM {s}.decortask_schema") == [(SCHEMA_VERSION,)]
    open_store(postgres_store_url(token)).close()  # opening again migrates nothing and keeps one row
    assert _sql(token, "SELECT version FROM {s}.decortask_schema") == [(SCHEMA_VERSION,)]


def test_a_store_written_by_a_newer_decortask_is_refused_naming_both_versions(token: str) -> None:
    open_store(postgres_store_url(token)).close()
    _sql(token, f"UPDATE {{s}}.decortask_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as caught:
        open_store(postgres_store_url(token))
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION}, the newest this decortask knows" in message
    assert "Upgrade decortask" in message


def test_a_store_at_an_older_version_is_migrated_forward_and_keeps_its_records(token: str) -> None:
    store = open_store(postgres_store_url(token))
    store.create(_record("kept"))
    store.create(_record("step", root_id="wf-1"))
    store.close()
    # As decortask left it at version 1: the workflow joins of version 2, the event feed of version 3, the
    # flow-control tables of version 4, the late results' mailboxes of version 5, the root_id column of
    # version 6 and the continuations pending of version 7 did not exist yet.
    _sql(
        token,
        "DROP TABLE {s}.decortask_joins, {s}.decortask_events, {s}.decortask_event_counter,"
        " {s}.decortask_rates, {s}.decortask_slots, {s}.decortask_spawn_boxes, {s}.decortask_spawn_children,"
        " {s}.decortask_follow",
    )
    _sql(token, "ALTER TABLE {s}.decortask_tasks DROP COLUMN root_id")
    _sql(
        token,
        "DROP FUNCTION {s}.decortask_task_event, {s}.decortask_log_event, {s}.decortask_append_event CASCADE",
    )
    _sql(token, "UPDATE {s}.decortask_schema SET version = 1")
    store = open_store(postgres_store_url(token))
    try:
        assert _sql(token, "SELECT version FROM {s}.decortask_schema") == [(SCHEMA_VERSION,)]
        assert store.get("kept") is not None
        assert store.join_member("j", 0) == 1  # type: ignore[attr-defined]
        assert store.acquire_slot("b", "t", "w", 1, 0.0)  # type: ignore[attr-defined]
        store.spawn_open("p")  # type: ignore[attr-defined]
        assert store.spawn_post("p", "c")  # type: ignore[attr-defined]
        assert [r.id for r in store.list_tasks(TaskQuery(root_id="wf-1"))] == ["step"]  # filled in
        assert store.follow_pending(0.0, 10) == []  # type: ignore[attr-defined]
    finally:
        store.close()


def test_members_of_one_join_ending_at_once_are_each_counted_once(store: PostgresStore) -> None:
    counts: list[int] = []
    barrier = threading.Barrier(8)

    def end(member: int) -> None:
        barrier.wait(timeout=30)
        counts.append(store.join_member("chord", member))
        counts.append(store.join_member("chord", member))  # a redelivered report counts nothing

    threads = [threading.Thread(target=end, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert max(counts) == 8 and counts.count(8) >= 1
    assert sorted(set(counts)) == list(range(1, 9))  # every count from 1 to 8 was seen by one member


def test_schemas_keep_stores_apart_in_one_database(request: pytest.FixtureRequest) -> None:
    first, second = open_store(postgres_test_store(request)), open_store(postgres_test_store(request))
    try:
        first.create(_record("only-in-first"))
        assert first.get("only-in-first") is not None
        assert second.get("only-in-first") is None
        assert second.count_tasks(TaskQuery()) == 0
    finally:
        first.close()
        second.close()


def test_a_schema_name_that_is_not_a_plain_identifier_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a plain identifier"):
        open_store(f"{POSTGRES_URL}?schema=x;drop")


# -- errors -------------------------------------------------------------------------------------------------


def test_an_unreachable_server_is_reported_without_its_password() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://decortask:s3cret-pw@127.0.0.1:1/test?connect_timeout=2")
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "postgresql://decortask:****@127.0.0.1:1/test" in message
    assert "check that the server is up" in message


def test_a_store_error_after_opening_names_the_masked_url(token: str) -> None:
    url = postgres_store_url(token).replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@")
    opened = open_store(url)  # trust authentication takes any password
    try:
        _sql(token, "DROP TABLE {s}.decortask_heartbeats")
        with pytest.raises(StoreError) as caught:
            opened.heartbeat("w1", time.time())
        assert "s3cret-pw" not in str(caught.value)
        assert "postgres:****@" in str(caught.value)
    finally:
        opened.close()


def test_only_the_writes_of_a_store_opened_with_events_append_to_the_feed(token: str) -> None:
    with_events, without = (
        open_store(postgres_store_url(token), events=100),
        open_store(postgres_store_url(token)),
    )
    try:
        with_events.create(_record("seen"))
        without.create(_record("unseen"))
        without.transition("seen", S.RUNNING, expect={S.PENDING}, attempt=1)  # a write of the other store
        with_events.transition("unseen", S.RUNNING, expect={S.PENDING}, attempt=1)
        events = PostgresEventFeed(with_events).read(0, 10, 0)
        assert [(n, e["id"], e["status"]) for n, e in events] == [
            (1, "seen", "PENDING"),
            (2, "unseen", "RUNNING"),
        ]
    finally:
        with_events.close()
        without.close()


def test_event_numbers_are_contiguous_across_concurrent_and_rolled_back_writers(token: str) -> None:
    store = open_store(postgres_store_url(token), events=10_000)
    try:
        store.create_many([_record(f"t{n}") for n in range(40)])

        def run(n: int) -> None:
            store.transition(f"t{n}", S.RUNNING, expect={S.PENDING}, attempt=1)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        with psycopg.connect(POSTGRES_URL) as conn:  # a writer whose event is rolled back with it
            conn.execute("SET decortask.events = '10000'")
            conn.execute(f"UPDATE {store.s}.decortask_tasks SET status = 'SUCCESS' WHERE id = 't0'")
            conn.rollback()
        store.transition("t0", S.SUCCESS, expect={S.RUNNING}, result=1)
        feed = PostgresEventFeed(store)
        numbers = [n for n, _ in feed.read(0, 1000, 0)]
        assert numbers == list(range(1, 82))  # contiguous: no number lost to a waiting or rolled-back writer
        assert feed.bounds() == (1, 81)
    finally:
        store.close()


# -- outcomes by NOTIFY ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("closed_before", [False, True])
def test_a_waiter_is_woken_by_the_notify_of_a_terminal_transition_in_another_process(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, closed_before: bool
) -> None:
    if closed_before:  # a store closed after a wait and used again (an app reopens its store)
        store.create(_record("t0", status=S.SUCCESS))
        assert store.wait_for_outcome("t0", timeout=5) is not None
        store.close()
    store.outcome_notices.recheck = 60.0  # far past the test's deadline: only a notice can wake it
    store.create(_record("t1", status=S.RUNNING, attempt=1))
    first_read = first_read_done(store, monkeypatch)
    got: list[TaskRecord | None] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait_for_outcome("t1", timeout=30)))
    waiter.start()
    assert first_read.wait(30)  # read RUNNING, listening: from now on only the NOTIFY wakes it
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_succeed, args=(store.url, "t1"))
    writer.start()
    writer.join(timeout=60)
    waiter.join(timeout=30)
    assert [r.result if r else None for r in got] == [42]
    assert (store.outcome_notices.notified, store.outcome_notices.rechecked) == (1, 0)


def _succeed(url: str, task_id: str) -> None:
    other = open_store(url)
    other.transition(task_id, S.SUCCESS, expect={S.RUNNING}, result=42)
    other.close()


def test_a_rolled_back_transition_sends_no_notice(store: PostgresStore) -> None:
    store.create(_record("t1", status=S.RUNNING, attempt=1))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as listener:
        listener.execute(f'LISTEN "{store.channel}"')
        with psycopg.connect(POSTGRES_URL) as conn:
            conn.execute(
                f"UPDATE {store.s}.decortask_tasks SET status = 'SUCCESS' WHERE id = 't1' RETURNING id"
            )
            conn.execute("SELECT pg_notify(%s, 't1')", (store.channel,))
            conn.rollback()
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
        store.transition("t1", S.SUCCESS, expect={S.RUNNING}, result=1)
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["t1"]


# -- the schedule -------------------------------------------------------------------------------------------


def test_claiming_skips_entries_another_transaction_holds_instead_of_waiting(store: PostgresStore) -> None:
    for n in range(3):
        store.add_schedule(ScheduleEntry(f"e{n}", f"t{n}", "q", due_at=100.0 + n, body="{}"))
    with psycopg.connect(POSTGRES_URL) as holder:
        holder.execute(f"SELECT id FROM {store.s}.decortask_schedule WHERE id = 'e0' FOR UPDATE")
        claimed: list[list[ScheduleEntry]] = []
        claimer = threading.Thread(target=lambda: claimed.append(store.claim_due(200.0, 10, "w1", 30.0)))
        claimer.start()
        claimer.join(timeout=20)
        assert not claimer.is_alive(), "claim_due waited for the lock another transaction holds"
        holder.rollback()
    assert [[e.id for e in batch] for batch in claimed] == [["e1", "e2"]]
    assert [e.id for e in store.claim_due(200.0, 10, "w2", 30.0)] == ["e0"]


def _claim_all(url: str, barrier: Any, results: Any) -> None:
    store = open_store(url)
    barrier.wait(timeout=60)
    mine: list[str] = []
    while batch := store.claim_due(1e9, 7, "claimer", 600.0):
        mine.extend(e.id for e in batch)
    results.put(mine)
    store.close()


def test_two_processes_claiming_the_schedule_take_each_entry_exactly_once(store: PostgresStore) -> None:
    for n in range(400):
        store.add_schedule(ScheduleEntry(f"e{n:03}", f"t{n}", "q", due_at=float(n), body="{}"))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store.url, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    claimed = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    every = sorted(claimed[0] + claimed[1])
    assert every == [f"e{n:03}" for n in range(400)]


# -- purging ------------------------------------------------------------------------------------------------


def test_purge_deletes_expired_records_with_their_logs_and_keys_in_batches(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("decortask.store.postgres.PURGE_BATCH", 10)
    records = [
        _record(f"old{n}", status=S.SUCCESS, expires_at=50.0, idempotency_key=f"k{n}") for n in range(25)
    ]
    store.create_many([*records, _record("live", status=S.SUCCESS, expires_at=500.0)])
    store.append_log("old0", LogLine(1.0, "line"))
    assert store.purge_expired(100.0) == 25
    assert store.get("old0") is None and store.get("live") is not None
    s = store.s
    with psycopg.connect(POSTGRES_URL) as conn:
        assert conn.execute(f"SELECT count(*) FROM {s}.decortask_logs").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {s}.decortask_idempotency").fetchone() == (0,)


# -- what jsonb cannot hold ---------------------------------------------------------------------------------


def test_a_nul_character_in_an_error_message_is_stored_replaced_instead_of_failing_the_outcome(
    store: PostgresStore,
) -> None:
    store.create(_record("t1", status=S.RUNNING, attempt=1, kwargs={"raw": "a\x00b"}))
    done = store.transition("t1", S.FAILED, expect={S.RUNNING}, error_message="bad\x00byte", result="r\x00")
    assert done is not None
    stored = store.get("t1")
    assert stored is not None
    assert (stored.status, stored.error_message) == (S.FAILED, "bad\ufffdbyte")
    assert (stored.kwargs, stored.result) == ({"raw": "a\x00b"}, "r\x00")  # json columns keep it as is
    store.set_progress("t1", 0.5, "half\x00way")
    assert store.get("t1").progress_message == "half\ufffdway"  # type: ignore[union-attr]


# -- lost connections ---------------------------------------------------------------------------------------


def test_after_the_server_dropped_the_pools_connections_one_call_fails_and_the_next_works(
    request: pytest.FixtureRequest,
) -> None:
    store = open_store(postgres_test_store(request) + "&pool_min=3")
    assert isinstance(store, PostgresStore)
    try:
        store.create(_record("t1"))
        pool = store._connections()
        pool.wait(timeout=30)  # at least three connections are open, and all are idle
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            held = [pool.getconn() for _ in range(pool.get_stats()["pool_available"])]
            pids = [conn.info.backend_pid for conn in held]
            for conn in held:
                pool.putconn(conn)
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
            deadline = time.monotonic() + 30
            gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
            while admin.execute(gone, (pids,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the server did not end the backends"
                time.sleep(0.01)
        with pytest.raises(StoreError, match="check that the server is up"):
            store.get("t1")  # a restart of the server looks the same to the pool
        record = store.get("t1")
        assert record is not None and record.id == "t1"
    finally:
        store.close()


# -- reading from the command line --------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DECORTASK_") or k.startswith("DECORTASK_TEST")
    }
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args, "--broker-url", "memory://"],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_decortask_tasks_reads_a_postgresql_store_and_creates_none_where_there_is_none(token: str) -> None:
    url = postgres_store_url(token)
    missing = _cli("tasks", "--store-url", url)
    assert missing.returncode != 0
    assert f"there is no decortask store in schema 'dt_test_{token}'" in missing.stderr
    with psycopg.connect(POSTGRES_URL) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (f"dt_test_{token}",)
        ).fetchone()
    assert found is None  # nothing was created
    store = open_store(url)
    store.create(_record("listed-task"))
    store.close()
    listing = _cli("tasks", "--store-url", url, "--json")
    assert listing.returncode == 0, listing.stderr
    assert '"listed-task"' in listing.stdout


def test_without_psycopg_installed_the_error_names_the_extra() -> None:
    script = (
        "import sys; sys.modules['psycopg'] = None\n"  # as if psycopg were not installed
        "from decortask.store import open_store\n"
        "open_store('postgresql://postgres@127.0.0.1:5432/test')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "pip install 'decortask[postgres]'" in done.stderr
