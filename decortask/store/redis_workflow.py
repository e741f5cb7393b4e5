"""The workflows' joins (`workflow_state.py`) for `RedisStore`: a set of ended members per chord.

Layout: `ns:join:<join id>`, a set of member indexes, expiring `JOIN_TTL` after its last report.
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
