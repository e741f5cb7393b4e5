"""Stores of a test's own: a fresh store of each backend for tests parametrized over them, and a Redis store
under its own namespace; whatever they wrote is removed when the test ends. And `first_read_done`, for tests
of a wait woken by its outcome's notice."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import delete_redis_namespace, postgres_test_store

from decortask.store import TaskRecord, TaskStore, open_store
from decortask.store.redis import RedisStore

#: The backends a `store_url` fixture is parametrized over.
BACKENDS = ["memory", "sqlite", "redis", "postgres"]


def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> str:
    """The URL of a fresh store of backend `request.param` (one of BACKENDS), removed after the test.

    A Redis store gets a namespace starting with `prefix`; a PostgreSQL one a schema of its own.
    """
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    if request.param == "postgres":
        return postgres_test_store(request)
    base: str = request.getfixturevalue("redis_url")
    namespace = f"{prefix}-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: delete_redis_namespace(base, namespace))
    return f"{base}?namespace={namespace}"


@contextlib.contextmanager
def own_redis_store(redis_url: str, namespace: str) -> Iterator[RedisStore]:
    """A `RedisStore` on `redis_url` under `namespace`, closed and its keys deleted on exit."""
    opened = open_store(f"{redis_url}?namespace={namespace}")
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        delete_redis_namespace(redis_url, namespace)
        opened.close()


def first_read_done(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a wait has read its record (still unfinished): from then on only a notice can wake it."""
    done = threading.Event()
    read = store.get

    def reading(task_id: str) -> TaskRecord | None:
        record = read(task_id)
        done.set()
        return record

    monkeypatch.setattr(store, "get", reading)
    return done
