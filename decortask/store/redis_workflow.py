"""The workflows' joins (`workflow_state.py`) for `RedisStore`: a set of ended members per chord.

Layout: `ns:join:<join id>`, a set of member indexes, expiring `JOIN_TTL` after its last report; and
`ns:follow`, the continuations pending (`follow_state.py`), a sorted set of task ids by when the outcome
marked them (the transition script adds them).
"""

from __future__ import annotations

import contextlib
from typing import Any

from .workflow_state import JOIN_TTL


class RedisWorkflowJoins:
    """`join_member` for `RedisStore`."""

    _client: Any
    namespace: str

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def join_member(self, join_id: str, member: int) -> int:
        key = f"{self.namespace}:join:{join_id}"
        with self._errors(), self._client.pipeline(transaction=True) as pipe:
            pipe.sadd(key, member)
            pipe.scard(key)
            pipe.expire(key, JOIN_TTL)
            _, count, _ = pipe.execute()
        return int(count)


class RedisFollow:
    """`FollowStore` for `RedisStore`."""

    _client: Any
    _follow: str

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def follow_pending(self, before: float, limit: int) -> list[str]:
        with self._errors():
            found = self._client.zrangebyscore(self._follow, "-inf", f"({before!r}", start=0, num=limit)
        return [str(task_id) for task_id in found]

    def follow_done(self, task_id: str) -> None:
        with self._errors():
            self._client.zrem(self._follow, task_id)
