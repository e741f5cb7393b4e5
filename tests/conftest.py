"""Shared fixtures: real servers on loopback, skipped locally when absent and failing under CI=true.

Apps for in-process tests come from decortask's own pytest plugin (`decortask_app`, `decortask_worker`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

#: The pytest-xdist worker running this process (gw0, gw1, ...; "" without xdist) and how many there are.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


#: Redis databases the benchmarks empty with FLUSHDB (benchmarks/run.py: 14, benchmarks/log_lines.py: 11).
BENCHMARK_REDIS_DBS = frozenset({14, 11})


def _redis_db_of_this_worker(url: str) -> str:
    """`url` with a Redis database of the xdist worker's own: the URL's for gw0, then counting down (15, 13,
    12, 10 for gw0-gw3 by default), past the benchmarks' databases.

    Keys are namespaced per test, but kombu keeps its `unacked` index once per database: a test that shortens
    the visibility timeout would hand another xdist worker's in-flight messages out again.
    """
    if not XDIST_WORKER:
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    dbs = [db % 16 for db in range(base, base - 16, -1) if db % 16 not in BENCHMARK_REDIS_DBS]
    db = dbs[int(XDIST_WORKER.removeprefix("gw")) % len(dbs)]
    return urlunsplit(parts._replace(path=f"/{db}"))


REDIS_URL = _redis_db_of_this_worker(os.environ.get("DECORTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
AMQP_URL = os.environ.get("DECORTASK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get("DECORTASK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip when a server is down on a laptop; fail under CI=true, where every server must be up."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI=true requires every broker; .ci/run starts them)")
    pytest.skip(message)


def require_redis() -> None:
    """`require_server` for the Redis that REDIS_URL names."""
    url = urlsplit(REDIS_URL)
    require_server("Redis", url.hostname or "127.0.0.1", url.port or 6379)


def require_amqp() -> None:
    """`require_server` for the RabbitMQ that AMQP_URL names."""
    url = urlsplit(AMQP_URL)
    require_server("RabbitMQ", url.hostname or "127.0.0.1", url.port or 5672)


def require_postgres() -> None:
    """`require_server` for the PostgreSQL that POSTGRES_URL names."""
    url = urlsplit(POSTGRES_URL)
    require_server("PostgreSQL", url.hostname or "127.0.0.1", url.port or 5432)


def postgres_store_url(token: str) -> str:
    """A PostgreSQL store URL of its own schema (dropped by `drop_postgres_schema`); skips when the server
    is down (fails under CI)."""
    require_postgres()
    return f"{POSTGRES_URL}?schema=dt_test_{token}"


def postgres_test_store(request: pytest.FixtureRequest) -> str:
    """`postgres_store_url` of a fresh schema, dropped when the requesting test ends."""
    token = uuid.uuid4().hex[:10]
    url = postgres_store_url(token)
    request.addfinalizer(lambda: drop_postgres_schema(token))
    return url


def drop_postgres_schema(token: str) -> None:
    """Drop the schema a test's PostgreSQL store (`postgres_store_url(token)`) wrote."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "dt_test_{token}" CASCADE')


def amqp_vhost(url: str = AMQP_URL) -> str:
    """The RabbitMQ vhost an AMQP URL names, as kombu reads it (`//` and none are `/`), for rabbitmqctl -p."""
    return unquote(urlsplit(url).path[1:]) or "/"


BROKERS = ("sqlite", "redis", "amqp")


def broker_urls(kind: str, tmp: os.PathLike[str], token: str) -> tuple[str, str]:
    """(broker URL, store URL) for a broker kind: SQLite uses one file for both, Redis a Redis store in its
    own namespace, RabbitMQ a SQLite store. Skips (or fails under CI) when the server is down.

    "<kind>+postgres" (e.g. "redis+postgres"): that broker with a PostgreSQL store in the schema of `token`
    (the caller drops it: `drop_postgres_schema(token)`).
    """
    kind, _, store_kind = kind.partition("+")
    if store_kind == "postgres":
        return broker_urls(kind, tmp, token)[0], postgres_store_url(token)
    sqlite_file = f"sqlite:///{os.fspath(tmp)}/decortask.db"
    if kind == "sqlite":
        return sqlite_file, sqlite_file
    if kind == "redis":
        require_redis()
        return REDIS_URL, f"{REDIS_URL}?namespace=test-{token}"
    require_amqp()
    return AMQP_URL, sqlite_file


def delete_redis_namespace(url: str, namespace: str) -> None:
    """Delete every key a test's Redis store wrote under `namespace` on the server at `url`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    require_redis()
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    require_amqp()
    return AMQP_URL


@pytest.fixture
def unique() -> str:
    """A short unique token for queue names and key namespaces, so tests never see each other's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> Iterator[str]:
    yield f"sqlite:///{os.fspath(tmp_path)}/decortask.db"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="chaos soak: 10,000 tasks and 30 minutes of chaos"
    )


#: Test files whose tests take minutes (fresh virtualenvs, mypy on the whole package): they run first, so that
#: no xdist worker is handed one near the end of the run and finishes it alone.
START_FIRST = ("tests/test_install.py", "tests/test_static.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if XDIST_WORKER:  # a stable sort: every xdist worker must collect the same tests in the same order
        items.sort(key=lambda item: not item.nodeid.startswith(START_FIRST))
    if config.getoption("--long"):
        # The long soak runs 30 minutes of chaos plus the drain: past the suite's per-test timeout.
        for item in items:
            if "soak" in item.nodeid:
                item.add_marker(pytest.mark.timeout(45 * 60))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if XDIST_WORKERS > 1 and item.get_closest_marker("slow"):
        pytest.fail(
            "a slow test stops, restarts or throttles a broker server that the other xdist workers' tests use: "
            "run the slow tests without -n (CI's second pass: pytest -m slow)"
        )
