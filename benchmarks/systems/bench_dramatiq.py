"""Dramatiq: `--processes 1 --threads 8`, no results middleware except for the round trip.

With `BENCH_RESULTS` set (the round-trip measure only), the broker has the Results middleware on a Redis
backend (`BENCH_RESULTS_URL`) and the client waits with `message.get_result(block=True)`.
"""

from __future__ import annotations

import os

import dramatiq

from . import tracker

QUEUE = os.environ.get("BENCH_QUEUE_PREFIX", "bench_") + "dramatiq"  # run.py: unique per run
RESULTS = bool(os.environ.get("BENCH_RESULTS"))
_url = os.environ["BENCH_BROKER"]
if _url.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # pika reads the vhost from the path, and "/" must be spelled %2F there.
    broker: dramatiq.Broker = RabbitmqBroker(url=_url[:-2] + "/%2F" if _url.endswith("//") else _url)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=_url)
if RESULTS:  # before the actors: store_results is an option of this middleware
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=os.environ["BENCH_RESULTS_URL"])))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, max_retries=0)
def noop(port: int = 0) -> None:
    tracker.work(port)


@dramatiq.actor(
    actor_name="bench_echo", queue_name=QUEUE, max_retries=0, **({"store_results": True} if RESULTS else {})
)
def echo(i: int) -> int:
    return i


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.send(0)


def flush() -> bool:
    """Dramatiq publishes inside `.send()`: nothing is left to flush."""
    return True


def probe(port: int) -> None:
    noop.send(port)


def roundtrip(i: int) -> None:
    got = echo.send(i).get_result(block=True, timeout=30_000)
    if got != i:
        raise RuntimeError(f"echo({i}) returned {got!r}")


def worker_command() -> list[str]:
    return ["-m", "dramatiq", "systems.bench_dramatiq", "--processes", "1", "--threads", "8", "-Q", QUEUE]
