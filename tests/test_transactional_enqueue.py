"""Transactional enqueue (issue 16): `.delay()` inside `app.transaction(conn)` writes its task in the
application's own PostgreSQL transaction; a rollback sends nothing, a commit sends once, and a producer
killed between the commit and the publish loses nothing (the relay sends it).

A network broker (Redis here, as the outbox needs one) and a PostgreSQL store of its own schema.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import behaviour_tasks as bt
import psycopg
import pytest
from conftest import POSTGRES_URL, REDIS_URL, postgres_test_store, require_redis
from outbox_helpers import assert_relayed_exactly_once, task_of_killed_producer
from workers import REPO

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.errors import ConfigurationError

pytestmark = pytest.mark.broker


class Boom(Exception):
    pass


@pytest.fixture
def queue() -> str:
    return f"txn-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    return postgres_test_store(request)


@pytest.fixture
def app(store_url: str, queue: str) -> Iterator[Decortask]:
    require_redis()
    built = Decortask(REDIS_URL, store_url, default_queue=queue)
    try:
        yield built
    finally:
        built.transport.delete_queue(queue)
        built.close()
        reset_default_app()


@pytest.fixture
def conn(app: Decortask) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """The application's own connection, with an orders table of its own beside the store's tables."""
    schema = app.store.s  # type: ignore[attr-defined]
    with psycopg.connect(POSTGRES_URL) as connection:
        connection.execute(f"CREATE TABLE {schema}.orders (id text PRIMARY KEY)")
        connection.commit()
        yield connection


def _orders(app: Decortask) -> list[str]:
    with psycopg.connect(POSTGRES_URL) as other:
        return [row[0] for row in other.execute(f"SELECT id FROM {app.store.s}.orders")]  # type: ignore[attr-defined]


def test_a_rollback_writes_no_record_and_sends_nothing(
    app: Decortask, conn: psycopg.Connection, queue: str
) -> None:
    with pytest.raises(Boom), app.transaction(conn):
        conn.execute(f"INSERT INTO {app.store.s}.orders VALUES ('o1')")  # type: ignore[attr-defined]
        handle = bt.add.delay(1, 2)
        assert app.store.get(handle.id) is None  # not committed: invisible outside the transaction
        raise Boom
    assert app.flush_published(timeout=10)
    assert (_orders(app), app.store.get(handle.id), app.transport.queue_size(queue)) == ([], None, 0)
    assert app.store.outbox_due(1e12, 1e12, 10) == []  # type: ignore[attr-defined]


def test_a_commit_writes_the_record_with_the_data_and_sends_the_message_once(
    app: Decortask, conn: psycopg.Connection, queue: str
) -> None:
    with app.transaction(conn):
        conn.execute(f"INSERT INTO {app.store.s}.orders VALUES ('o1')")  # type: ignore[attr-defined]
        handle = bt.add.delay(1, 2)
        assert app.transport.queue_size(queue) == 0  # nothing leaves before the commit
    assert app.flush_published(timeout=10)
    record = app.store.get(handle.id)
    assert _orders(app) == ["o1"] and record is not None and record.status is TaskStatus.PENDING
    assert app.transport.queue_size(queue) == 1
    [item] = app.store.outbox_due(1e12, 1e12, 10)  # type: ignore[attr-defined]
    assert (item.entry.task_id, item.published) == (handle.id, True)


def test_inside_an_outer_transaction_the_messages_are_left_to_the_relay(
    app: Decortask, conn: psycopg.Connection, queue: str
) -> None:
    conn.execute("SELECT 1")  # the connection is now inside a transaction the block cannot commit
    with app.transaction(conn):
        handle = bt.add.delay(1, 2)
    assert app.store.get(handle.id) is None  # still the outer transaction's
    conn.commit()
    assert app.flush_published(timeout=10)
    assert app.transport.queue_size(queue) == 0
    [item] = app.store.outbox_due(1e12, 1e12, 10)  # type: ignore[attr-defined]
    assert (item.entry.task_id, item.published) == (handle.id, False)  # the relay's to publish


def test_confirm_true_is_refused_inside_a_block(app: Decortask, conn: psycopg.Connection, queue: str) -> None:
    with pytest.raises(ConfigurationError, match="confirm=True"), app.transaction(conn):
        bt.add.apply_async((1, 2), confirm=True)
    assert app.transport.queue_size(queue) == 0


def test_a_store_that_is_not_postgresql_is_refused(queue: str) -> None:
    app = Decortask("memory://", "memory://", default_queue=queue, set_default=False)
    with pytest.raises(ConfigurationError, match="needs a PostgreSQL store"), app.transaction(object()):
        pass


PRODUCER = """
import sys, time
import psycopg
import behaviour_tasks as bt
from decortask import Decortask
app = Decortask(sys.argv[1], sys.argv[2], default_queue=sys.argv[3], publisher_delay=3600)
with psycopg.connect(sys.argv[4]) as conn:
    with app.transaction(conn):
        handle = bt.sleep_not_opted_in.delay(0.1)
    print(handle.id, flush=True)  # committed; the publisher waits an hour before its first batch
    time.sleep(3600)
"""


def test_a_producer_sigkilled_between_commit_and_publish_loses_nothing(
    app: Decortask, store_url: str, queue: str, tmp_path: Path
) -> None:
    task_id = task_of_killed_producer(PRODUCER, REDIS_URL, store_url, queue, POSTGRES_URL)  # after the commit
    assert_relayed_exactly_once(app, REDIS_URL, store_url, queue, task_id, tmp_path)


# -- Django on PostgreSQL -------------------------------------------------------------------------------------

DJANGO_PRODUCER = """
import sys
import django
from django.conf import settings

broker, store, queue, schema, outcome = sys.argv[1:6]
settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "test", "USER": "postgres",
                           "HOST": "127.0.0.1", "PORT": "5432"}},
    INSTALLED_APPS=[],
)
django.setup()
from django.db import connection, transaction
import behaviour_tasks as bt
from decortask import Decortask

class Rollback(Exception):
    pass

app = Decortask(broker, store, default_queue=queue)
try:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {schema}.orders VALUES ('o1')")
        with app.transaction(connection):
            handle = bt.add.delay(1, 2)
        print(handle.id, flush=True)
        with transaction.atomic():  # a nested atomic() is a savepoint: the outer commit still decides
            pass
        assert app.flush_published(timeout=10) and app.transport.queue_size(queue) == 0  # not before the commit
        if outcome == "rollback":
            raise Rollback
except Rollback:
    pass
assert app.flush_published(timeout=10)
app.close()
"""


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_with_django_the_outermost_atomic_decides_whether_the_task_exists_and_is_sent(
    app: Decortask, conn: psycopg.Connection, store_url: str, queue: str, outcome: str
) -> None:
    pytest.importorskip("django")
    schema = app.store.s  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_PRODUCER, REDIS_URL, store_url, queue, schema, outcome],
        cwd=REPO / "tests", capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    task_id = done.stdout.decode().strip()
    record = app.store.get(task_id)
    if outcome == "commit":
        assert _orders(app) == ["o1"] and record is not None and record.status is TaskStatus.PENDING
        assert app.transport.queue_size(queue) == 1
    else:
        assert (_orders(app), record, app.transport.queue_size(queue)) == ([], None, 0)


def test_with_django_outside_atomic_the_block_is_refused(app: Decortask) -> None:
    class DjangoLike:  # what app.transaction() looks at on Django's connection wrapper
        in_atomic_block = False

        def on_commit(self, hook: object) -> None:  # pragma: no cover - never reached
            raise AssertionError

    with (
        pytest.raises(ConfigurationError, match=r"inside transaction.atomic\(\)"),
        app.transaction(DjangoLike()),
    ):
        pass
