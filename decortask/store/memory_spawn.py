"""The late results' mailboxes (`spawn_state.py`) for `MemoryStore`, under the store's lock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _Box:
    children: list[str] = field(default_factory=list)
    taken: int = 0
    closed: bool = False
    late: list[str] = field(default_factory=list)  # late, not yet delivered


class MemorySpawn:
    """`SpawnStore` for `MemoryStore`."""

    _lock: threading.RLock
    _spawn_boxes: dict[str, _Box]

    def _boxes(self) -> dict[str, _Box]:
        if not hasattr(self, "_spawn_boxes"):
            self._spawn_boxes = {}
        return self._spawn_boxes

    def spawn_open(self, parent_id: str) -> None:
        with self._lock:
            self._boxes().setdefault(parent_id, _Box())

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        with self._lock:
            box = self._boxes().setdefault(parent_id, _Box(closed=True))  # gone: as good as closed
            if child_id not in box.children:
                box.children.append(child_id)
                if not box.closed:
                    return True
                box.late.append(child_id)
            return child_id not in box.late

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        with self._lock:
            box = self._boxes().get(parent_id)
            if box is None:
                return []
            got = box.children[start : start + limit]
            if got:
                box.taken = start + len(got)
            return got

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        with self._lock:
            box = self._boxes().setdefault(parent_id, _Box())
            if not box.closed:
                box.closed = True
                box.late.extend(box.children[box.taken if keep_taken else 0 :])
            return list(box.late)

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        with self._lock:
            box = self._boxes().get(parent_id)
            if box is not None and child_id in box.late:
                box.late.remove(child_id)

    def spawn_unsettled(self, limit: int, offset: int = 0) -> list[str]:
        with self._lock:
            found = [p for p, box in self._boxes().items() if not box.closed or box.late]
            return found[offset : offset + limit]
