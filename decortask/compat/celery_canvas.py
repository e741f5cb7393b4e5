"""Celery's canvas names over decortask's canvas: `signature`, `maybe_signature`, `chain`, `group`, `chord`.

A Celery-style task's `.s()`, `.si()` and `.signature()` return decortask signatures of the task registered
underneath, so `add.s(2, 2) | mul.s(4)`, `group(...)` and `chord(...)` are decortask workflows
(docs/workflows.md) and `from celery import chain, group, chord` becomes one changed import. What Celery
takes besides (a list in `chain([...])`, `chord(header)(callback)`, signatures as dicts, options as
`options=` or keywords) is accepted here; an idiom with no honest equivalent raises
`UnsupportedCeleryFeature` naming what to use instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..canvas import Chain, Chord, Group, Signature
from ..canvas import chain as native_chain
from ..canvas import chord as native_chord
from ..canvas import group as native_group
from ..canvas_handles import WorkflowHandle
from ..errors import DecortaskError

#: Celery's signature options that decortask signatures carry as they are.
SIGNATURE_OPTIONS = frozenset({"countdown", "queue", "priority", "expires"})

#: Celery's signature options that decortask cannot carry, with what to do instead.
REFUSED_SIGNATURE_OPTIONS = {
    "eta": "a signature is sent later, so give it a delay from then: countdown=",
    "link": "pass link= to the task's apply_async(), or put the next step in a chain (a | b)",
    "link_error": "pass link_error= to the task's apply_async()",
    "task_id": "decortask derives a workflow task's id from its place (decortask.canvas.derived_id)",
    "routing_key": "route with queue=",
    "exchange": "route with queue=",
    "headers": "pass what the task needs as arguments",
    "serializer": "decortask sends JSON only",
}

#: Celery's canvas kinds of a signature dict (`subtask_type`) that are not a single task's call.
_WORKFLOW_KINDS = frozenset({"chain", "group", "chord", "chunks", "xmap", "xstarmap"})

_PARTS = (Signature, Chain, Group, Chord)


class UnsupportedCeleryFeature(DecortaskError, NotImplementedError):
    """A Celery feature that `decortask.compat.celery` does not provide (the message says what to use)."""


def call_signature(
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    **extra: Any,
) -> Signature[Any]:
    """A decortask signature of the task registered as `name`, from Celery's `Signature(...)` arguments:
    options come as `options=` and/or keywords; those decortask cannot carry raise, named."""
    given = {**(options or {}), **extra}
    immutable = bool(given.pop("immutable", immutable))
    for option, reason in REFUSED_SIGNATURE_OPTIONS.items():
        if option in given:
            raise UnsupportedCeleryFeature(
                f"signature of {name}: option {option}= is not supported: {reason}"
            )
    unknown = sorted(set(given) - SIGNATURE_OPTIONS)
    if unknown:
        raise UnsupportedCeleryFeature(
            f"signature of {name}: unknown option(s) {', '.join(unknown)}; supported: "
            f"{', '.join(sorted(SIGNATURE_OPTIONS))}, immutable"
        )
    if not isinstance(args, Sequence | None) or isinstance(args, str):
        raise UnsupportedCeleryFeature(f"signature of {name}: args must be a tuple or list, got {args!r}")
    sig: Signature[Any] = Signature(name, tuple(args or ()), dict(kwargs or {}), immutable=immutable)
    return sig.set(**given) if given else sig


def signature(
    varies: Any,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Signature[Any]:
    """Celery's `signature()`: of a task's registered name, of a task (Celery-style or decortask's), or
    of a signature dict (`sig.to_dict()`, or Celery's own form); a decortask signature is returned as it is.

    Sending it, or a workflow holding it, needs the task registered in the sending process.
    """
    if isinstance(varies, Signature):
        return varies
    if isinstance(varies, Mapping):
        kind = varies.get("subtask_type")
        if kind in _WORKFLOW_KINDS:
            raise UnsupportedCeleryFeature(
                f"signature(): a serialized Celery {kind} cannot be read back; build it again with "
                "chain(), group() or chord() from decortask.compat.celery"
            )
        return call_signature(
            varies.get("task"),  # type: ignore[arg-type]
            varies.get("args"),
            varies.get("kwargs"),
            varies.get("options"),
            immutable=bool(varies.get("immutable", False)),
        )
    name = varies if isinstance(varies, str) else getattr(varies, "name", None)
    if not isinstance(name, str):
        raise UnsupportedCeleryFeature(
            f"signature() takes a task, its registered name or a signature dict, got {varies!r}"
        )
    return call_signature(name, args, kwargs, options, **extra)


def maybe_signature(d: Any) -> Any:
    """Celery's `maybe_signature`: None stays None, a dict becomes a signature, a signature or workflow
    is returned as it is; anything else raises."""
    if d is None or isinstance(d, _PARTS):
        return d
    if isinstance(d, Mapping):
        return signature(d)
    raise UnsupportedCeleryFeature(
        f"expected a signature (task.s(...)), a chain, a group, a chord or a signature dict, got {d!r}"
    )


def _parts(given: Iterable[Any]) -> list[Any]:
    return [maybe_signature(part) for part in given]


def chain(*tasks: Any) -> Chain[Any]:
    """Celery's `chain(a.s(), b.s())`, also `chain([a.s(), b.s()])` or of a generator: a decortask chain."""
    if len(tasks) == 1 and not isinstance(tasks[0], (*_PARTS, Mapping)):
        tasks = tuple(tasks[0])
    return native_chain(*_parts(tasks))


def group(*tasks: Any) -> Group:
    """Celery's `group(a.s(1), a.s(2))`, also of one list or generator: a decortask group."""
    if len(tasks) == 1 and not isinstance(tasks[0], (*_PARTS, Mapping)):
        tasks = tuple(tasks[0])
    return native_group(*_parts(tasks))


class ChordHeader:
    """`chord(header)` without its callback: calling it with the callback sends the chord, as in Celery
    (`chord(header)(callback)` returns the callback's handle)."""

    def __init__(self, header: Group) -> None:
        self.header = header

    def __call__(self, body: Any) -> WorkflowHandle[Any]:
        return native_chord(self.header, maybe_signature(body)).apply_async()

    def __repr__(self) -> str:
        return f"chord({self.header!r})"


def chord(header: Any, body: Any = None, **options: Any) -> Any:
    """Celery's `chord(header, body)`: a decortask chord whose callback gets the list of the header's
    results; `chord(header)(body)` sends it at once. `pass_failures=True` is decortask's option (the
    callback runs even when a member failed, see docs/workflows.md)."""
    pass_failures = bool(options.pop("pass_failures", False))
    if options:
        raise UnsupportedCeleryFeature(
            f"chord(): option(s) {', '.join(sorted(options))} are not supported; set call options on the "
            "callback's signature (callback.s().set(queue=...))"
        )
    members = header if isinstance(header, Group) else group(header)
    if body is None:
        if pass_failures:
            raise UnsupportedCeleryFeature(
                "chord(header, pass_failures=True) needs its callback: chord(h, cb)"
            )
        return ChordHeader(members)
    return native_chord(members, maybe_signature(body), pass_failures=pass_failures)


def linked(where: str, keyword: str, given: Any) -> tuple[Signature[Any], ...] | None:
    """`link=` / `link_error=` of Celery's `apply_async` as decortask signatures (dicts read as
    signatures); a callable, a name or a workflow raises, saying what to pass."""
    if given is None:
        return None
    items = list(given) if isinstance(given, list | tuple) else [given]
    sigs = []
    for item in items:
        sig = maybe_signature(item) if isinstance(item, Mapping) else item
        if not isinstance(sig, Signature):
            raise UnsupportedCeleryFeature(
                f"{where}: {keyword}={item!r} is not supported: {keyword}= takes signatures "
                "(task.s(...) or a list of them); to run several steps one after another after it, send a "
                "chain instead of linking: (task.s(...) | next.s() | last.s()).apply_async()"
            )
        sigs.append(sig)
    return tuple(sigs)


__all__ = [
    "ChordHeader",
    "UnsupportedCeleryFeature",
    "call_signature",
    "chain",
    "chord",
    "group",
    "linked",
    "maybe_signature",
    "signature",
]
