"""`liveness.LivenessProbe` on Redis: a named client connection per worker, listed by `CLIENT LIST`.

A worker keeps one connection open named `decortask-worker-<id>` (`CLIENT SETNAME`, sent again by
redis-py on every reconnect); Redis drops it from `CLIENT LIST` the moment the socket closes, which a
SIGKILL does at once. A key `decortask:liveness:held:<id>` holds that connection's client id and says the
id was held at all: a name missing without that key is an id never held (an older decortask), so
UNKNOWN, never DEAD. A look costs `CLIENT LIST ID` of the few client ids asked about; the full client list
(every connection of the server) is read only to confirm a suspected death by name, so a connection that
reconnected a moment ago (a new client id not yet in its key) is not mistaken for a dead one. Right after a Redis
restart every connection is new and the names come back only as workers reconnect, so while the server
has been up for less than `lease_timeout` the probe answers UNKNOWN for everyone.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable

import redis

from ..liveness import Verdict
from ..store.base import HEARTBEAT_TTL

PREFIX = "decortask-worker-"
HELD_KEY = "decortask:liveness:held:"
_NAME_OK = re.compile(r"[!-~]{1,200}")  # CLIENT SETNAME takes no spaces or newlines


def client_name(worker_id: str) -> str:
    if _NAME_OK.fullmatch(worker_id):
        return PREFIX + worker_id
    return PREFIX + hashlib.sha256(worker_id.encode()).hexdigest()


class RedisProbe:
    """Holds identities on named connections; looks with `INFO`, `CLIENT LIST` and `MGET`.

    Args:
        url: the broker's Redis URL.
        lease_timeout: the app's `lease_timeout` (a younger server answers UNKNOWN).
    """

    def __init__(self, url: str, lease_timeout: float) -> None:
        self.url = url
        self.lease_timeout = lease_timeout
        self._held: dict[str, redis.Redis] = {}
        self._ids: dict[str, int] = {}  # the client id each held connection had when last marked
        self._looker: redis.Redis | None = None
        self._lock = threading.Lock()

    def _client(self, name: str | None = None) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            client_name=name,
            single_connection_client=name is not None,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def hold(self, worker_id: str) -> None:
        client = self._client(client_name(worker_id))
        # Connects, and names the connection, before the marker says it is held.
        self._mark(worker_id, client, client.client_id())
        with self._lock:
            old = self._held.pop(worker_id, None)
            self._held[worker_id] = client
        if old is not None:
            old.close()

    def _mark(self, worker_id: str, client: redis.Redis, connection_id: int) -> None:
        client.set(HELD_KEY + worker_id, str(connection_id), ex=HEARTBEAT_TTL)
        self._ids[worker_id] = connection_id

    def keep(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for worker_id, client in held:
            try:
                connection_id = client.client_id()
            except redis.ConnectionError:  # it had dropped: the next command reconnects (and renames)
                connection_id = client.client_id()
            if connection_id != self._ids.get(worker_id):
                self._mark(worker_id, client, connection_id)

    def release(self, worker_id: str) -> None:
        with self._lock:
            client = self._held.pop(worker_id, None)
        if client is not None:
            client.delete(HELD_KEY + worker_id)  # the marker first: then a missing name reads UNKNOWN
            client.close()

    def look(self, worker_ids: Iterable[str]) -> dict[str, Verdict]:
        ids = list(worker_ids)
        with self._lock:
            if self._looker is None:
                self._looker = self._client()
            looker = self._looker
        try:
            pipe = looker.pipeline(transaction=False)
            pipe.info("server")
            pipe.mget([HELD_KEY + worker_id for worker_id in ids])
            info, held = pipe.execute()
            if float(info.get("uptime_in_seconds", 0)) < self.lease_timeout:
                return {}
            marked = {
                w: m.decode() if isinstance(m, bytes) else m for w, m in zip(ids, held, strict=True) if m
            }
            connection_ids = [m for m in marked.values() if m.isdigit()]
            listed = looker.client_list(client_id=connection_ids) if connection_ids else []
            verdicts = {worker_id: Verdict.UNKNOWN for worker_id in ids if worker_id not in marked}
            live = {client.get("name") for client in listed}
            suspects = [w for w in marked if client_name(w) not in live]
            if suspects:
                live |= {client.get("name") for client in looker.client_list(_type="normal")}
        except redis.RedisError:
            return {}
        for worker_id in marked:
            verdicts[worker_id] = Verdict.ALIVE if client_name(worker_id) in live else Verdict.DEAD
        return verdicts

    def close(self) -> None:
        with self._lock:
            clients = [*self._held.values(), *([self._looker] if self._looker else [])]
            self._held.clear()
            self._looker = None
        for client in clients:
            client.close()
