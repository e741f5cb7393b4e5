"""`CallOptions`: the per-call options of `.apply_async()` and `.apply_many()`, with their checks.

One place for what a caller may ask of one enqueue beyond its arguments. `Task` builds it from its keyword
parameters, `Decortask.send_task` and the producer pass it on, and the producer resolves it against the task's
own options and the app's settings. It sits below them all (it imports only `errors`), so every layer can
name it. Internal for now: users keep the keyword API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import Decortask
    from .canvas import Signature


@dataclass(frozen=True, kw_only=True)
class CallOptions:
    """Per-call options as the caller gave them; see `Task.apply_async` for what each one means.

    To add an option: a field here, its check or resolution below, the keyword on `Task.apply_async` (and
    `Task.apply_many` if it applies to a batch), and where the producer uses it.
    """

    countdown: float | None = None
    eta: datetime | float | None = None
    expires: datetime | float | None = None
    priority: int | None = None
    queue: str | None = None
    idempotency_key: str | None = None
    tags: Mapping[str, str] | None = None
    #: Wait for the broker's confirm before returning (and raise `BrokerUnavailable` within
    #: `confirm_timeout` if it does not come), instead of returning once the record is durable.
    confirm: bool = False
    #: Signatures sent once the task succeeded (`link=`), or ended otherwise (`link_error=`); see workflow.py.
    link: Sequence[Signature[Any]] = ()
    link_error: Sequence[Signature[Any]] = ()

    def links(self, app: Decortask) -> dict[str, Any] | None:
        """The message's `workflow` field for `link` / `link_error` (each routed as `.delay()` would), or None."""
        spec = {
            key: [sig.routed(app).to_dict() for sig in sigs]
            for key, sigs in (("link", self.link), ("link_error", self.link_error))
            if sigs
        }
        return spec or None

    def priority_or(self, default: int) -> int:
        """The call's priority, else `default` (the task's); 0..9."""
        priority = default if self.priority is None else self.priority
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ConfigurationError(f"priority={priority!r} is invalid: expected an integer from 0 to 9")
        return priority

    def due_at(self, now: float) -> float | None:
        """When the call may run (UNIX seconds), or None for now: a zero countdown or a past eta runs now."""
        countdown, eta = self.countdown, self.eta
        if countdown is not None and eta is not None:
            raise ConfigurationError("give countdown or eta, not both")
        if countdown is not None:
            if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or countdown < 0:
                raise ConfigurationError(f"countdown must be a number of seconds >= 0, got {countdown!r}")
            return now + countdown if countdown > 0 else None
        if eta is not None:
            when = _timestamp(eta, "eta")
            return when if when > now else None  # a past eta runs now
        return None

    def expires_at(self, now: float, default: float | None) -> float | None:
        """When the call expires (UNIX seconds), from its `expires` or else `default` (the task's), or None."""
        expires = self.expires if self.expires is not None else default
        if expires is None:
            return None
        if isinstance(expires, datetime):
            return _timestamp(expires, "expires")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
            raise ConfigurationError(
                f"expires must be seconds > 0 or a timezone-aware datetime, got {expires!r}"
            )
        return now + float(expires)

    def check_key_and_tags(self, where: str = "") -> None:
        """Raise `ConfigurationError` for a bad idempotency key or tags; `where` starts the message."""
        key, tags = self.idempotency_key, self.tags
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(f"{where}idempotency_key must be a non-empty string")
        if tags is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ConfigurationError(f"{where}tags must map strings to strings")


#: A call with no options: the task's and the app's defaults apply.
NO_OPTIONS = CallOptions()


def _timestamp(value: datetime | float, what: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"{what} is a naive datetime; pass a timezone-aware one, e.g. datetime.now(timezone.utc)"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a timezone-aware datetime or UNIX seconds, got {value!r}")
    return float(value)
