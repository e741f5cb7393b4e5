"""Flow-control options of a task (issue 17): rate limits, concurrency limits and their keys.

`@task(rate_limit="10/s")`, several at once (`rate_limit=["10/s", "100000/d"]`), per key
(`rate_limit_key=lambda tenant, **_: tenant`); `@task(concurrency_limit=2)`, per key (`concurrency_key=`).
The key functions get the call's own arguments and run when the task is sent, never in the worker: their
values travel as the tags `rate_limit_key` and `concurrency_key` (in the message and on the record), and
a tag of that name given to one call is that call's key. The worker side (`throttle.py`) turns these into
store buckets and asks the store (`store/limit_state.py`). docs/limits.md describes the behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import TaskDefinitionError
from .store.limit_state import RateBucket

#: Decorator options this module reads (task.py lists them with the others).
OPTION_NAMES = ("rate_limit", "rate_limit_key", "concurrency_limit", "concurrency_key")
#: The tags carrying a call's keys.
RATE_KEY_TAG = "rate_limit_key"
CONCURRENCY_KEY_TAG = "concurrency_key"
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Starts `count` apart are kept this much more than a period apart (5% of it, at most 50 ms): a start is
#: decided a moment before the task's code runs, and that moment varies from one delivery to the next.
GUARD_SECONDS = 0.05
GUARD_FRACTION = 0.05

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*$")


@dataclass(frozen=True)
class Rate:
    """At most `count` starts in any `period` seconds; `text` as the task gave it."""

    count: int
    period: float
    text: str

    @property
    def window(self) -> float:
        """The period the store enforces: a little longer than `period` (GUARD_SECONDS)."""
        return self.period + min(GUARD_SECONDS, self.period * GUARD_FRACTION)

    def spacing(self, lag: float) -> float:
        """How far apart reservations are put when parked attempts come back up to `lag` seconds late (the
        scheduler's half interval): a little more than the window, at most a tenth of the period more."""
        return max(self.window, self.period + min(lag, self.period * 0.1))


@dataclass(frozen=True)
class Limits:
    """A task's validated flow-control options."""

    rates: tuple[Rate, ...] = ()
    rate_key: Callable[..., Any] | None = None
    concurrency: int | None = None
    concurrency_key: Callable[..., Any] | None = None


def parse_rate(value: Any) -> Rate:
    """`"10/s"`, `"100/m"`, `"5000/h"`, `"100000/d"`, or with a count of units (`"3/10s"`)."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1 or float(match.group(2) or 1) <= 0:
        raise TaskDefinitionError(
            f"@task option rate_limit={value!r} is invalid: expected 'COUNT/UNIT' with a COUNT >= 1 and a "
            "UNIT of s, m, h or d (e.g. '10/s', '100000/d', '3/10s'), or a list of them"
        )
    count, many, unit = match.groups()
    return Rate(int(count), float(many or 1) * UNITS[unit], value.strip())


def parse_limits(raw: Mapping[str, Any]) -> Limits | None:
    """The `Limits` of a task's decorator options, or None when it has none; every error names the option."""
    if not any(raw.get(name) is not None for name in OPTION_NAMES):
        return None
    given = raw.get("rate_limit")
    texts: Sequence[Any] = () if given is None else [given] if isinstance(given, str) else given
    if not isinstance(texts, (list, tuple)):
        texts = [given]  # reported by parse_rate
    rates = tuple(parse_rate(text) for text in texts)
    concurrency = raw.get("concurrency_limit")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise TaskDefinitionError(
            f"@task option concurrency_limit={concurrency!r} is invalid: expected an integer >= 1"
        )
    for name, needs, has in (
        ("rate_limit_key", "rate_limit", rates),
        ("concurrency_key", "concurrency_limit", concurrency),
    ):
        key = raw.get(name)
        if key is not None and not callable(key):
            raise TaskDefinitionError(
                f"@task option {name}={key!r} is invalid: expected a function of the task's arguments "
                "returning the key (e.g. lambda tenant, *args, **kwargs: tenant)"
            )
        if key is not None and not has:
            raise TaskDefinitionError(
                f"@task option {name} needs {needs}: it says whose limit a call counts in"
            )
    return Limits(rates, raw.get("rate_limit_key"), concurrency, raw.get("concurrency_key"))


def call_tags(
    limits: Limits | None, args: Sequence[Any], kwargs: Mapping[str, Any], tags: Mapping[str, str] | None
) -> dict[str, str]:
    """A call's tags with its limit keys added (computed here, at send time); a tag given wins."""
    out = dict(tags or {})
    if limits is None:
        return out
    for tag, key in ((RATE_KEY_TAG, limits.rate_key), (CONCURRENCY_KEY_TAG, limits.concurrency_key)):
        if key is not None and tag not in out:
            value = key(*args, **kwargs)
            if value is not None:
                out[tag] = str(value)
    return out


def rate_buckets(
    task_name: str, limits: Limits, tags: Mapping[str, str], lag: float = 0.0
) -> list[RateBucket]:
    """The store buckets a start of this call counts in: one per rate, of its key.

    Args:
        lag: how late a parked attempt typically comes back (half the scheduler's interval).
    """
    key = tags.get(RATE_KEY_TAG, "")
    return [
        RateBucket(
            f"{task_name}|{rate.count}/{rate.period:g}s|{key}", rate.count, rate.window, rate.spacing(lag)
        )
        for rate in limits.rates
    ]


def slot_bucket(task_name: str, tags: Mapping[str, str]) -> str:
    """The store bucket of this call's concurrency slots."""
    return f"{task_name}|{tags.get(CONCURRENCY_KEY_TAG, '')}"
