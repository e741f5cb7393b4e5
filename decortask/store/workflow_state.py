"""What workflows keep in the store: the joins of chords, one atomic counter per chord.

A chord's callback runs once every member has ended. Each member's end is recorded in the store as
"member k of join j ended", and the store answers how many distinct members have ended, in one atomic step
(SQLite: one transaction, `sqlite_workflow.py`; Redis: one MULTI of SADD and SCARD, `redis_workflow.py`;
memory: under its lock). A member reported twice (its message redelivered after a crash) is counted once,
so the count reaches the chord's size exactly when its last member ends, however often members are reported.

A join's rows go with its members' records: when the expiry purges a record whose `workflow` names a join
(`join_ids`), the store deletes that join's rows in the same batch (SQLite, PostgreSQL, memory); Redis
expires a join's set `JOIN_TTL` after its last report.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

#: How long a join is kept after its last member's report (Redis expires it; seconds).
JOIN_TTL = 7 * 24 * 3600


@runtime_checkable
class WorkflowStore(Protocol):
    """The workflows' part of a store; every store backend implements it."""

    def join_member(self, join_id: str, member: int) -> int:
        """Record that member `member` of join `join_id` ended; how many distinct members have ended.

        Atomic, and idempotent per member: reporting the same member again changes nothing.
        """
        ...


def graph_join_id(graph_id: str, node: str) -> str:
    """The join that counts the ended dependencies of node `node` of graph `graph_id` (`graph_run.py`)."""
    return f"{graph_id}:{node}"


def join_ids(spec: Any) -> set[str]:
    """The ids of the joins a record's `workflow` (`spec`) reports to: its own chord's, and those of the
    workflows it is nested in (`then`); a graph node's record names its own join (every node that has one
    gets a record, run or skipped). A malformed spec names none."""
    found: set[str] = set()
    graph = spec.get("graph") if isinstance(spec, dict) else None
    if isinstance(graph, dict) and isinstance(graph.get("id"), str) and isinstance(graph.get("node"), str):
        found.add(graph_join_id(graph["id"], graph["node"]))
    while isinstance(spec, dict):
        chord, chain = spec.get("chord"), spec.get("chain")
        if isinstance(chord, dict) and isinstance(chord.get("id"), str):
            found.add(chord["id"])
        frame = chord if isinstance(chord, dict) else chain
        spec = frame.get("then") if isinstance(frame, dict) else None
    return found
