"""RetryPolicy: from a failed attempt to the delay before the next one, or give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import Retry


@dataclass(frozen=True)
class RetryPolicy:
    """How a task retries.

    Attributes:
        retries: extra attempts after the first.
        delay: seconds before the first retry.
        backoff: multiplier applied to the delay per further retry.
        max_delay: cap on any one delay (None: no cap).
        jitter: fraction (0..1) of each delay that is randomised downwards, to spread retry storms.
        retry_on: only these exception types are retried (empty: all except `dont_retry_on`).
        dont_retry_on: these exception types fail at once.
    """

    retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = ()
    dont_retry_on: tuple[type[BaseException], ...] = ()

    def base_delay(self, failed_attempt: int) -> float:
        """Delay after attempt number `failed_attempt` (1-based), before jitter."""
        value = self.delay * (self.backoff ** max(0, failed_attempt - 1))
        if self.max_delay is not None:
            value = min(value, self.max_delay)
        return value

    def next_delay(self, failed_attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait before the next attempt, or None when the task should fail now."""
        if failed_attempt > self.retries:
            return None
        if isinstance(exc, Retry):
            if exc.delay is not None:
                return max(0.0, float(exc.delay))
        elif not self.should_retry(exc):
            return None
        value = self.base_delay(failed_attempt)
        if self.jitter:
            value *= 1.0 - self.jitter * random.random()
        return value

    def should_retry(self, exc: BaseException) -> bool:
        if self.dont_retry_on and isinstance(exc, self.dont_retry_on):
            return False
        if self.retry_on:
            return isinstance(exc, self.retry_on)
        return True


#: The policy of a task that is not retried (and of one a worker does not know).
NO_RETRIES = RetryPolicy()
