"""FastAPI / asyncio producers, proven by the example (`examples/fastapi_app`).

The ASGI app runs in this process on a real event loop (httpx's `ASGITransport`); endpoints enqueue with
`await task.adelay(...)` and read tasks with the handle's async methods; a real
`decortask worker -A examples.fastapi_app.tasks` subprocess runs them on the embedded broker, Redis and
RabbitMQ.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from conftest import BROKERS, broker_urls
from workers import REPO, WorkerProcess

from decortask import Decortask, Middleware, TaskStatus
from decortask.app import reset_default_app
from decortask.message import Message

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the examples package, as the worker imports it (its cwd is REPO)


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Any]:
    """The example's ASGI app on one broker (the `Decortask(...)` made here is the current app it uses)."""
    from examples.fastapi_app.main import app as asgi_app

    kind = getattr(request, "param", "sqlite")
    broker_url, store_url = broker_urls(kind, tmp_path, unique)
    queue = f"fastapi-{unique}"
    app = Decortask(broker_url, store_url, default_queue=queue)
    worker = WorkerProcess(broker_url, store_url, queue, tmp_path / "worker.log")
    worker.command = [
        sys.executable, "-m", "decortask", "worker", "-A", "examples.fastapi_app.tasks", "-Q", queue,
        "-c", "2", "--broker-url", broker_url, "--store-url", store_url, "-l", "INFO",
    ]  # fmt: skip
    try:
        yield SimpleNamespace(asgi=asgi_app, app=app, worker=worker)
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()


def client(service: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.asgi), base_url="http://testserver")


@pytest.mark.parametrize("service", BROKERS, indirect=True)
def test_an_endpoint_awaits_adelay_and_another_reads_the_task_with_async_handle_methods(service: Any) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(service) as web:
            created = await web.post("/reports", json={"title": "Q3 <numbers>", "pages": 4})
            assert created.status_code == 202, created.text
            task_id = created.json()["id"]
            early = (await web.get(f"/reports/{task_id}")).json()
            assert early["status"] == "PENDING"  # published and recorded before the endpoint returned
            assert (await web.get(f"/reports/{task_id}/result")).status_code == 409  # not done, no wait

            with service.worker:
                done = await web.get(f"/reports/{task_id}/result", params={"wait": 30})
                assert done.status_code == 200, f"{done.text}\n{service.worker.log_tail()}"
                ping = await web.post("/ping/db.internal")  # an `async def` task, awaited by the endpoint
            assert ping.status_code == 200, f"{ping.text}\n{service.worker.log_tail()}"
            assert ping.json()["reply"] == "pong from db.internal"
            assert (await web.get("/reports/no-such-task")).status_code == 404
            view = (await web.get(f"/reports/{task_id}")).json()
            return {"done": done.json(), "view": view}

    seen = asyncio.run(scenario())
    assert seen["done"]["status"] == "SUCCESS"
    assert seen["done"]["value"]["title"] == "Q3 <numbers>" and seen["done"]["value"]["pages"] == 4
    view = seen["view"]
    assert (view["status"], view["progress"], view["progress_message"]) == ("SUCCESS", 1.0, "page 4 of 4")
    assert view["logs"] == ["report rendered"]
    assert service.app.handle(view["id"]).status is TaskStatus.SUCCESS


def test_adelay_records_and_publishes_off_the_event_loop_thread(service: Any) -> None:
    enqueued_on: list[int] = []

    class WhereEnqueued(Middleware):
        def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
            enqueued_on.append(threading.get_ident())

    service.app.add_middleware(WhereEnqueued())

    async def scenario() -> tuple[int, int]:
        async with client(service) as web:
            created = await web.post("/reports", json={"title": "off the loop", "pages": 1})
            return created.status_code, threading.get_ident()

    code, loop_thread = asyncio.run(scenario())
    assert code == 202
    assert len(enqueued_on) == 1 and enqueued_on[0] != loop_thread  # the loop never blocked on the broker
    assert service.app.transport.queue_size(service.app.settings.default_queue) == 1


def test_a_request_with_bad_input_enqueues_nothing(service: Any) -> None:
    async def scenario() -> int:
        async with client(service) as web:
            response = await web.post("/reports", json={"title": "", "pages": 0})
            return response.status_code

    assert asyncio.run(scenario()) == 422
    assert service.app.transport.queue_size(service.app.settings.default_queue) == 0


def test_an_endpoint_cancels_a_waiting_report_with_acancel(service: Any) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with client(service) as web:
            task_id = (await web.post("/reports", json={"title": "never", "pages": 1})).json()["id"]
            first = (await web.post(f"/reports/{task_id}/cancel")).json()
            again = (await web.post(f"/reports/{task_id}/cancel")).json()
            view = (await web.get(f"/reports/{task_id}")).json()
            missing = await web.post("/reports/no-such-task/cancel")
            return first, again, view["status"], missing.status_code

    assert asyncio.run(scenario()) == ({"cancelled": True}, {"cancelled": False}, "CANCELLED", 404)
