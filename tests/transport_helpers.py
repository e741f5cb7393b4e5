"""What the transport tests share: draining a consumer session until it has what a test expects."""

from __future__ import annotations

import time

from decortask.transport import ConsumerSession, Delivery


def receive(session: ConsumerSession, count: int, timeout: float = 10.0) -> list[Delivery]:
    """Drain `session` until it gave `count` deliveries or `timeout` seconds passed; what it gave."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(session.drain(0.1))
    return got
