"""Rate and concurrency limits in one process (issue 17): the options, keys computed at send time, and a
delivery over its limit parked in the store's schedule with its reason, through the real worker path
(`run_pending`). The cluster-wide behaviour with worker processes is tests/test_limits_workers.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from decortask import Decortask, TaskStatus, task
from decortask.app import reset_default_app
from decortask.cli import main
from decortask.errors import TaskDefinitionError
from decortask.limits import Rate, parse_rate
from decortask.store.limit_state import LimitStore
from decortask.testing import run_pending

KEYS_COMPUTED: list[str] = []


def tenant_of(tenant: str, n: int) -> str:
    KEYS_COMPUTED.append(tenant)
    return tenant


@task(name="tl.minutely", rate_limit=["1/m", "100000/d"])
def minutely(n: int) -> int:
    return n


@task(name="tl.per_tenant", rate_limit="1/h", rate_limit_key=tenant_of)
def per_tenant(tenant: str, n: int) -> int:
    return n


@task(name="tl.single", concurrency_limit=1)
def single(n: int) -> int:
    if n < 0:
        raise ValueError("negative")
    return n


@task(name="tl.per_account", concurrency_limit=1, concurrency_key=lambda account, n: account)
def per_account(account: str, n: int) -> int:
    return n


@task(name="tl.free")
def free(n: int) -> int:
    return n


@pytest.fixture
def app() -> Iterator[Decortask]:
    app = Decortask("memory://", "memory://", set_default=True, default_queue="limits-in-process")
    yield app
    app.close()
    reset_default_app()


def limit_store(app: Decortask) -> LimitStore:
    store = app.store
    assert isinstance(store, LimitStore)
    return store


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/s", Rate(10, 1.0, "10/s")), ("100000/d", Rate(100000, 86400.0, "100000/d")),
     (" 3 / 10s ", Rate(3, 10.0, "3 / 10s")), ("5/h", Rate(5, 3600.0, "5/h"))],
)  # fmt: skip
def test_rates_are_count_per_unit(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rate_limit": "10/w"}, "rate_limit='10/w' is invalid: expected 'COUNT/UNIT'"),
        ({"rate_limit": "0/s"}, "rate_limit='0/s' is invalid"),
        ({"rate_limit": ["10/s", 5]}, "rate_limit=5 is invalid"),
        ({"concurrency_limit": 0}, "concurrency_limit=0 is invalid: expected an integer >= 1"),
        ({"rate_limit": "1/s", "rate_limit_key": "tenant"}, "rate_limit_key='tenant' is invalid"),
        ({"concurrency_key": lambda n: n}, "concurrency_key needs concurrency_limit"),
    ],
)
def test_bad_limit_options_are_refused_at_decoration_naming_the_option(
    options: dict[str, object], says: str
) -> None:
    with pytest.raises(
        TaskDefinitionError, match=r"^@task option " + says.replace("(", r"\(").replace("[", r"\[")
    ):
        task(name="tl.bad", **options)(lambda n: n)  # type: ignore[call-overload]


def test_the_key_is_computed_when_sent_and_travels_as_a_tag(app: Decortask) -> None:
    KEYS_COMPUTED.clear()
    handle = per_tenant.delay("acme", 1)
    assert KEYS_COMPUTED == ["acme"]
    record = app.store.get(handle.id)
    assert record is not None and record.tags == {"rate_limit_key": "acme"}
    per_tenant.apply_async(args=("globex", 2), tags={"rate_limit_key": "vip"})  # a call's own key wins
    run_pending(app)
    assert KEYS_COMPUTED == ["acme"]  # not for a call giving its own key, and never in the worker
    assert handle.status is TaskStatus.SUCCESS


def test_a_call_over_its_rate_waits_in_the_schedule_without_using_an_attempt(app: Decortask) -> None:
    first, second, third = (minutely.delay(n) for n in range(3))
    other = free.delay(9)
    before = time.time()
    run_pending(app)
    assert first.status is TaskStatus.SUCCESS
    assert other.status is TaskStatus.SUCCESS  # other tasks keep flowing
    for handle, wait in ((second, 60.0), (third, 120.0)):  # one a minute, queued one behind the other
        record = app.store.get(handle.id)
        assert record is not None
        assert (record.status, record.reason, record.attempt) == (TaskStatus.SCHEDULED, "rate_limited", 0)
        assert record.scheduled_for is not None
        assert before + wait <= record.scheduled_for <= time.time() + wait + 1.0
    assert app.store.count_schedule() == 2


def test_each_key_has_its_own_rate(app: Decortask) -> None:
    handles = [per_tenant.delay(tenant, n) for n, tenant in enumerate(["acme", "globex", "acme"])]
    run_pending(app)
    assert [h.status for h in handles] == [TaskStatus.SUCCESS, TaskStatus.SUCCESS, TaskStatus.SCHEDULED]


def test_a_call_finding_every_slot_held_by_a_live_worker_waits_and_runs_once_it_is_free(
    app: Decortask,
) -> None:
    store = limit_store(app)
    app.store.heartbeat("elsewhere", time.time())
    assert store.acquire_slot("tl.single|", "running-elsewhere", "elsewhere", 1, time.time())
    handle = single.delay(1)
    run_pending(app)
    record = app.store.get(handle.id)
    assert record is not None
    assert (record.status, record.reason, record.attempt) == (TaskStatus.SCHEDULED, "concurrency_limited", 0)
    store.release_slot("tl.single|", "running-elsewhere")
    run_pending(app, now=time.time() + 2)
    assert handle.get(timeout=5) == 1
    assert store.slot_holders("tl.single|") == []  # released after it ran


def test_a_slot_held_by_a_dead_worker_is_taken_over(app: Decortask) -> None:
    store = limit_store(app)
    assert store.acquire_slot("tl.single|", "running-on-a-dead-worker", "gone", 1, time.time())
    handle = single.delay(2)  # "gone" never sent a heartbeat: it counts as dead
    run_pending(app)
    assert handle.get(timeout=5) == 2
    assert store.slot_holders("tl.single|") == []


def test_each_key_has_its_own_concurrency_places(app: Decortask) -> None:
    store = limit_store(app)
    app.store.heartbeat("elsewhere", time.time())
    assert store.acquire_slot("tl.per_account|acme", "running-elsewhere", "elsewhere", 1, time.time())
    acme, globex = per_account.delay("acme", 1), per_account.delay("globex", 2)
    run_pending(app)
    assert acme.status is TaskStatus.SCHEDULED  # acme's one place is taken
    assert globex.get(timeout=5) == 2  # globex's is free


def test_the_slot_is_released_whatever_the_outcome(app: Decortask) -> None:
    store = limit_store(app)
    failed = single.delay(-1)
    run_pending(app)
    assert failed.status is TaskStatus.FAILED
    assert store.slot_holders("tl.single|") == []
    succeeded = single.delay(3)
    run_pending(app)
    assert succeeded.get(timeout=5) == 3
    assert store.slot_holders("tl.single|") == []


def test_decortask_show_says_why_a_task_waits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/limits.db"
    app = Decortask(url, url, set_default=True, default_queue="limits-show")
    try:
        minutely.delay(1)
        waiting = minutely.delay(2)
        run_pending(app)
        shown = CliRunner().invoke(main, ["show", waiting.id, "--broker-url", url, "--store-url", url])
    finally:
        app.close()
        reset_default_app()
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output[shown.output.index("{") :])
    assert (detail["status"], detail["reason"], detail["attempt"]) == ("SCHEDULED", "rate_limited", 0)
    assert detail["scheduled_for"] is not None
