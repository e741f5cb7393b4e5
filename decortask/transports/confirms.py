"""Pipelined publisher confirms on a py-amqp channel: publish a batch, then wait once for all its acks.

py-amqp's confirm mode waits for the broker's ack after every single publish, a round trip per message.
Here every publish on the channel is counted (RabbitMQ numbers them 1, 2, ... from `confirm.select`) and
every ack is tracked (single or `multiple`), so a batch is confirmed by waiting until the highest
contiguously acked number reaches the last one published. The guarantee is unchanged: nothing counts as
published before the broker confirmed it.

This reaches into py-amqp's channel (`_basic_publish`, `_confirm_selected`, the `basic_ack`/`basic_nack`
events); tests/test_kombu_contract.py checks each of them against the installed py-amqp.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from amqp import spec

_ATTRIBUTE = "_decortask_confirms"


class NackedPublish(Exception):
    """The broker refused (nacked) a published message."""


class ConfirmTracker:
    """Counts publishes and acks on one confirm-mode channel (one thread uses it at a time)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.published = 0
        self.confirmed = 0  # every number up to this one is acked
        self._acked_out_of_order: set[int] = set()
        self._nacked = 0
        if not channel._confirm_selected:
            channel._confirm_selected = True
            channel.confirm_select()
        raw: Callable[..., Any] = channel._basic_publish

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = raw(*args, **kwargs)
            self.published += 1
            return result

        # Instance attribute: py-amqp's own confirming publish calls `self._basic_publish`, so the
        # publishes of other callers on this channel are counted too.
        channel._basic_publish = counted
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.confirmed = max(self.confirmed, tag)
        else:
            self._acked_out_of_order.add(tag)
        while self.confirmed + 1 in self._acked_out_of_order:
            self.confirmed += 1
            self._acked_out_of_order.discard(self.confirmed)
        self._acked_out_of_order = {t for t in self._acked_out_of_order if t > self.confirmed}

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked = max(self._nacked, tag)
        self._on_ack(tag, multiple)  # settled, though refused: nothing more will come for it

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[int]:
        """Publishes inside do not wait for their confirms; yields the count before the first of them."""
        channel = self.channel
        confirming = channel.basic_publish
        channel.basic_publish = channel._basic_publish
        try:
            yield self.published
        finally:
            channel.basic_publish = confirming

    def wait(self, after: int, timeout: float) -> None:
        """Wait until every publish numbered above `after` is confirmed.

        Raises:
            NackedPublish: the broker refused one of them.
            TimeoutError: no confirm arrived for `timeout` seconds.
        """
        target = self.published
        while self.confirmed < target:
            self.channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=timeout)
        if self._nacked > after:
            raise NackedPublish(f"the broker refused message {self._nacked - after} of the batch")


def confirm_tracker(channel: Any) -> ConfirmTracker:
    """The tracker of `channel`, installed on first use."""
    tracker: ConfirmTracker | None = getattr(channel, _ATTRIBUTE, None)
    if tracker is None:
        tracker = ConfirmTracker(channel)
        setattr(channel, _ATTRIBUTE, tracker)
    return tracker
