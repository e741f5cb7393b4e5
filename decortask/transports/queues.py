"""RabbitMQ task queues: the arguments decortask declares them with, and the one line it says when the
broker holds a queue with other arguments.

A task queue is `classic` (durable, `x-max-priority=9`: decortask's priorities 0..9) or `quorum` (durable,
replicated, `x-queue-type=quorum`). A quorum queue also gets a broker-side delivery limit: RabbitMQ counts
every return of a message (a consumer that died, or that gave back an unstarted message at shutdown) and,
past `x-delivery-limit`, removes it: with no dead-letter exchange it is dropped (measured on 3.10), so
decortask routes it to `<queue>.dlq` through the default exchange and declares that queue first. The
store's per-attempt count (`max_deliveries`) stays the rule that ends a task; the broker's limit is set
above it and is only a backstop (a dropped message's task would still be recovered from its record).
With `queue_type="auto"` a queue that already exists as a quorum queue is used as it is: found with
declarations on channels of their own, since a refused declaration closes the channel it was made on.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from ..config import AUTO_QUEUE_TYPE, DEAD_LETTER_SUFFIX, Settings

__all__ = ["DEAD_LETTER_SUFFIX", "MAX_PRIORITY", "PRECONDITION_FAILED", "QueueKind"]

CLASSIC = "classic"
QUORUM = "quorum"
#: A queue that existed as a quorum queue before decortask looked (`queue_type="auto"`), used as it is.
ADOPTED = "adopted"
MAX_PRIORITY = 9
#: The AMQP reply code of a declaration that does not match the existing queue.
PRECONDITION_FAILED = 406
#: Lowest broker-side delivery limit of a quorum queue (RabbitMQ 4.0's own default).
MIN_DELIVERY_LIMIT = 20

QueueKind = str  # CLASSIC, QUORUM or ADOPTED


def delivery_limit(max_deliveries: int) -> int:
    """The `x-delivery-limit` of a quorum queue: above `max_deliveries` with room for shutdown returns.

    A message comes back once per worker death (which the store counts) and once per orderly shutdown that
    gives back unstarted messages (which it does not); so the store's limit is reached first.
    """
    return max(MIN_DELIVERY_LIMIT, 2 * max_deliveries + 10)


def declared_arguments(kind: QueueKind, name: str, settings: Settings) -> dict[str, Any] | None:
    """The `queue_arguments` decortask declares queue `name` of `kind` with (None: declared passively)."""
    if kind == ADOPTED:
        return None
    if kind == CLASSIC:
        return {"x-max-priority": MAX_PRIORITY}
    arguments: dict[str, Any] = {"x-queue-type": QUORUM}
    if not name.endswith(DEAD_LETTER_SUFFIX):  # a dead letter is never dead-lettered again
        arguments.update(
            {
                "x-delivery-limit": delivery_limit(settings.max_deliveries),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": name + DEAD_LETTER_SUFFIX,
            }
        )
    return arguments


def describe(kind: QueueKind, name: str, settings: Settings) -> str:
    """What decortask declares, for an error: "a quorum queue with x-delivery-limit=20 ..."."""
    if kind == CLASSIC:
        return "a classic durable queue with x-max-priority=9"
    arguments = declared_arguments(QUORUM, name, settings) or {}
    if "x-delivery-limit" not in arguments:
        return "a quorum queue"
    return (
        f"a quorum queue with x-delivery-limit={arguments['x-delivery-limit']} (from max_deliveries="
        f"{settings.max_deliveries}) dead-lettering to {name + DEAD_LETTER_SUFFIX!r}"
    )


def refused(exc: BaseException) -> bool:
    """Whether `exc` is RabbitMQ refusing a declaration of an existing queue (PRECONDITION_FAILED)."""
    return getattr(exc, "reply_code", None) == PRECONDITION_FAILED


def reply_of(exc: BaseException) -> str:
    return str(getattr(exc, "reply_text", "") or exc)


def probe(channel: Any, name: str, settings: Settings) -> QueueKind:
    """Resolve a `queue_type="auto"` queue: classic (declared as such now, if new) or an existing quorum one.

    Declares on channels of their own on `channel`'s connection, so a refusal closes only those.

    Raises:
        Exception: the broker's refusal of the classic declaration when the queue is not a quorum queue
            (`refused` is true of it), or a connection error.
    """
    arguments = declared_arguments(CLASSIC, name, settings)
    try:
        _declare_alone(channel, name, arguments)
    except Exception as exc:
        if (
            refused(exc)
            and Refusal.learn(channel, name, arguments, reply_of(exc)).existing(CLASSIC) == QUORUM
        ):
            return ADOPTED
        raise
    return CLASSIC


@dataclass(frozen=True)
class Refusal:
    """What RabbitMQ refused in a declaration of an existing queue.

    Attributes:
        differences: (argument, the queue's value, decortask's value) as RabbitMQ writes them ("none":
            absent, "the value 'x' of type 't'", "'x'"), the most telling first (the type, the limit).
        vhost: the queue's virtual host.
        complete: whether every differing argument was found (else only the first ones).
        reply: the broker's first reply, for a refusal that is not about arguments.
    """

    differences: tuple[tuple[str, str, str], ...]
    vhost: str
    complete: bool
    reply: str

    @classmethod
    def learn(cls, channel: Any, name: str, arguments: dict[str, Any] | None, reply: str) -> Refusal:
        """Every argument in which queue `name` differs from `arguments`, from `reply` and further tries.

        RabbitMQ names only the first argument that differs, in its own order (a dead-letter exchange before
        the queue type): each try takes the queue's value of the one named, on a channel of its own.
        """
        trial = dict(arguments or {})
        found: list[tuple[str, str, str]] = []
        first = _INEQUIVALENT.search(reply)
        text, complete = reply, False
        for _ in range(MAX_TRIES):
            named = _INEQUIVALENT.search(text)
            if named is None:
                break
            arg, theirs = named.group("arg"), named.group("theirs")
            found.append((arg, theirs, named.group("ours")))
            value = _typed(theirs, trial.get(arg))
            if value is None:
                trial.pop(arg, None)
            else:
                trial[arg] = value
            try:
                _declare_alone(channel, name, trial)  # the queue exists: this only compares
            except Exception as exc:
                if not refused(exc):
                    break
                text = reply_of(exc)
                continue
            complete = True
            break
        found.sort(key=lambda d: TELLING.index(d[0]) if d[0] in TELLING else len(TELLING))
        return cls(tuple(found), first.group("vhost") if first else "/", complete, reply)

    def existing(self, ours: QueueKind) -> QueueKind | None:
        """The existing queue's type (None: cannot tell), given decortask declared it as `ours`."""
        for arg, theirs, _ours in self.differences:
            if arg == "x-queue-type":
                value = _value(theirs)
                return CLASSIC if value in (None, repr(CLASSIC)) else (value or "").strip("'")
        return (QUORUM if ours == QUORUM else CLASSIC) if self.complete else None


#: Most declarations a `Refusal` tries (one per differing argument).
MAX_TRIES = 8
#: Arguments a mismatch names first: the ones that change what a queue is.
TELLING = ("x-queue-type", "x-max-priority", "x-delivery-limit")


def _declare_alone(channel: Any, name: str, arguments: dict[str, Any] | None) -> None:
    """Declare `name` (durable) on a new channel of `channel`'s connection, closed again afterwards."""
    own = channel.connection.channel()
    try:
        own.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
    finally:
        with contextlib.suppress(Exception):  # closed by the broker already after a refusal
            own.close()


def quorum_priorities(server_version: str) -> bool:
    """Whether quorum queues of a RabbitMQ of this version deliver by priority (4.0 on; unknown: no)."""
    found = re.match(r"(\d+)\.", server_version)
    return bool(found) and int(found.group(1)) >= 4  # type: ignore[union-attr]


# RabbitMQ's reply text: inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received none but
# current is the value 'quorum' of type 'longstr'
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']*)' for queue '[^']*' in vhost '(?P<vhost>[^']*)': "
    r"received (?P<ours>.*?) but current is (?P<theirs>.*?)\s*$"
)
_TYPED_VALUE = re.compile(r"^the value (?P<value>'.*') of type '[^']*'$")


def _value(text: str) -> str | None:
    """RabbitMQ's "the value 'quorum' of type 'longstr'" or "'quorum'" as "'quorum'"; "none" as None."""
    if text == "none":
        return None
    typed = _TYPED_VALUE.match(text)
    return typed.group("value") if typed else text


def _typed(text: str, ours: Any) -> Any:
    """RabbitMQ's text of a value as the value to declare (None: absent); the type from its text or `ours`."""
    value = _value(text)
    if value is None:
        return None
    typed = re.match(r"^the value '.*' of type '(?P<type>[^']*)'$", text)
    kind = typed.group("type") if typed else ("signedint" if isinstance(ours, int) else "longstr")
    raw = value[1:-1] if value.startswith("'") and value.endswith("'") else value
    if kind in ("signedint", "long", "short", "byte", "unsignedint", "unsignedshort", "unsignedbyte"):
        return int(raw)
    if kind in ("double", "float"):
        return float(raw)
    if kind == "bool":
        return raw == "true"
    return raw


def _arguments_text(pairs: list[tuple[str, str]]) -> str:
    """(argument, RabbitMQ's text of its value) as "with a='x', b=3 and without c, d"."""
    present = [f"{arg}={value}" for arg, text in pairs if (value := _value(text)) is not None]
    absent = [arg for arg, text in pairs if _value(text) is None]
    parts = ([f"with {', '.join(present)}"] if present else []) + (
        [f"without {', '.join(absent)}"] if absent else []
    )
    return " and ".join(parts)


def fitting_type(
    channel: Any, name: str, kind: QueueKind, refusal: Refusal, settings: Settings
) -> str | None:
    """The `queue_type` under which decortask would take the existing queue `name` as it is, if any.

    The other type, if RabbitMQ accepts its declaration (tried on a channel of its own); else `auto` for
    a quorum queue (used as it is).
    """
    for candidate in (CLASSIC, QUORUM):
        if candidate == kind:
            continue
        try:
            _declare_alone(channel, name, declared_arguments(candidate, name, settings))  # exists: compares
        except Exception:
            continue
        return candidate
    return AUTO_QUEUE_TYPE if refusal.existing(kind) == QUORUM else None


def mismatch_line(
    name: str, kind: QueueKind, refusal: Refusal, url: str, settings: Settings, fits: str | None
) -> str:
    """One line: the arguments that differ between decortask's declaration and the queue, both values of
    each, and the ways out (delete the queue, a `queue_type` that fits it (`fitting_type`), another name)."""
    if refusal.differences:
        theirs = _arguments_text([(arg, value) for arg, value, _ in refusal.differences])
        ours = _arguments_text([(arg, value) for arg, _, value in refusal.differences])
        what = f"queue {name!r} on {url} already exists {theirs}, but decortask declares it {ours}"
    else:
        what = f"the broker at {url} refused decortask's declaration of queue {name!r} ({refusal.reply})"
    existing = refusal.existing(kind)
    if existing in (CLASSIC, QUORUM) and existing != kind:
        what += f" (it is a {existing} queue)"
    base = name[: -len(DEAD_LETTER_SUFFIX)] if name.endswith(DEAD_LETTER_SUFFIX) else name
    match = ""
    if fits is not None:
        match = f", set queue_types={{{base!r}: {fits!r}}} to use it as it is"
    elif [arg for arg, _, _ in refusal.differences] == ["x-delivery-limit"]:
        match = ", give every process the max_deliveries that declared it"
    return (
        f"{what}; decortask declares {describe(kind, name, settings)} (its queue_type is "
        f"{settings.queue_type_for(name)!r}): delete the queue (rabbitmqctl -p {refusal.vhost} delete_queue "
        f"{name}, once its messages are drained) so decortask declares it{match}, or use another queue name"
    )
