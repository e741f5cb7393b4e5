"""The base of the enums whose members are written into records, logs and messages as their values."""

from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    """A `str` enum that prints as its value."""

    def __str__(self) -> str:
        # The value, as a plain str would print: log lines and f-strings show `worker_lost`, not
        # `Reason.WORKER_LOST`, on every Python version.
        return str(self.value)
