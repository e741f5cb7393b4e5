"""Dramatiq: `--processes 1 --threads 8`, no results middleware."""

from __future__ import annotations

import os

import dramatiq

from . import tracker

QUEUE = "bench_dramatiq"
_url = os.environ["BENCH_BROKER"]
if _url.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # pika reads the vhost from the path, and "/" must be spelled %2F there.
    broker: dramatiq.Broker = RabbitmqBroker(url=_url[:-2] + "/%2F" if _url.endswith("//") else _url)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=_url)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, max_retries=0)
def noop(port: int = 0) -> None:
    tracker.work(port)


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.send(0)


def probe(port: int) -> None:
    noop.send(port)


def worker_command() -> list[str]:
    return ["-m", "dramatiq", "systems.bench_dramatiq", "--processes", "1", "--threads", "8", "-Q", QUEUE]
